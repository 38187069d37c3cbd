package repair

import (
	"context"
	"testing"
)

func TestDemoEndToEnd(t *testing.T) {
	res, err := Demo(context.Background(), t.TempDir(), DemoOptions{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range res.Steps {
		if !s.OK {
			t.Fatalf("step %s failed: %s", s.Name, s.Detail)
		}
	}
	if !res.OK || res.Before.Status != StatusClean || res.Before.ExitCode() != ExitClean {
		t.Fatalf("demo: %+v", res)
	}
	if res.After.Status != StatusUncorrected || res.After.ExitCode() != ExitUncorrected || res.After.Found == 0 {
		t.Fatalf("after damage: status %s found %d", res.After.Status, res.After.Found)
	}
	var rmap *StructureReport
	for i := range res.After.Structures {
		if res.After.Structures[i].Name == "rmap" {
			rmap = &res.After.Structures[i]
		}
	}
	if rmap == nil || rmap.Found == 0 || rmap.Findings[0].Name != "node_bad_checksum" {
		t.Fatalf("rmap structure: %+v", rmap)
	}
}
