package demo

import (
	"context"
	"testing"

	"github.com/scrubd/scrubd/repair"
)

func TestDemoEndToEnd(t *testing.T) {
	res, err := Run(context.Background(), t.TempDir(), Options{}, func(s Step) { t.Logf("%+v", s) })
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range res.Steps {
		if !s.OK {
			t.Fatalf("step %s failed: %s", s.Name, s.Detail)
		}
	}
	if !res.OK || res.Found.Status != repair.StatusUncorrected || res.Report.Status != repair.StatusCorrected || res.Final.Status != repair.StatusClean {
		t.Fatalf("demo: %+v", res)
	}
	if res.Report.ExitCode() != repair.ExitCorrected || res.Report.Repaired == 0 {
		t.Fatalf("repair report: exit %d repaired %d", res.Report.ExitCode(), res.Report.Repaired)
	}
}
