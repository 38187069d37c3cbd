package repair

import (
	"context"
	"testing"
)

func TestDemoEndToEnd(t *testing.T) {
	res, err := Demo(context.Background(), t.TempDir(), DemoOptions{}, func(s DemoStep) { t.Logf("%+v", s) })
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range res.Steps {
		if !s.OK {
			t.Fatalf("step %s failed: %s", s.Name, s.Detail)
		}
	}
	if !res.OK || res.Found.Status != StatusUncorrected || res.Report.Status != StatusCorrected || res.Final.Status != StatusClean {
		t.Fatalf("demo: %+v", res)
	}
	if res.Report.ExitCode() != ExitCorrected || res.Report.Repaired == 0 {
		t.Fatalf("repair report: exit %d repaired %d", res.Report.ExitCode(), res.Report.Repaired)
	}
}
