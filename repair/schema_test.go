package repair

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/invopop/jsonschema"
)

// TestReportSchema keeps docs/report.schema.json, the JSON Schema of the
// report, generated from the Report type: it fails when the committed file
// is stale (-update rewrites it).
func TestReportSchema(t *testing.T) {
	r := &jsonschema.Reflector{DoNotReference: true, RequiredFromJSONSchemaTags: false}
	s := r.Reflect(&Report{})
	s.ID = "urn:scrubd:report:v1"
	s.Title = "scrubd check and repair report"
	s.Description = "What scrubd fsck, scrubd scrub and the mount's control socket report (version 1)."
	got, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	p := filepath.Join("..", "docs", "report.schema.json")
	if *update {
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run go test ./repair -run TestReportSchema -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is stale: run go test ./repair -run TestReportSchema -update", p)
	}
	// The golden report validates in shape: every field it has is in the
	// schema.
	js, _ := json.Marshal(goldenReport())
	var doc map[string]any
	json.Unmarshal(js, &doc)
	for k := range doc {
		if _, ok := s.Properties.Get(k); !ok {
			t.Errorf("report field %q is not in the schema", k)
		}
	}
}
