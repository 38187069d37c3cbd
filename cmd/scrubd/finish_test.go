package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/spf13/cobra"

	"github.com/scrubd/scrubd/repair"
)

// TestInterruptedReportPrinted: a canceled fsck or scrub prints its partial
// report (JSON with "complete": false, no error object on top) and exits
// 32, fsck(8)'s "canceled by user request".
func TestInterruptedReportPrinted(t *testing.T) {
	for _, asJSON := range []bool{true, false} {
		var out, errb bytes.Buffer
		cmd := &cobra.Command{Use: "fsck"}
		cmd.SetOut(&out)
		rep := &repair.Report{Version: repair.ReportVersion, Mode: "offline", Target: "x.img", Status: repair.StatusClean, Interrupted: true}
		err := finishReport(cmd, rep, fmt.Errorf("check: %w", context.Canceled), asJSON)
		if code := finish(cmd, err, &out, &errb); code != exitCanceled {
			t.Fatalf("exit %d, want %d", code, exitCanceled)
		}
		if !asJSON {
			if !bytes.Contains(out.Bytes(), []byte("interrupted")) {
				t.Errorf("summary:\n%s", out.String())
			}
			continue
		}
		var got struct {
			Complete    *bool  `json:"complete"`
			Interrupted bool   `json:"interrupted"`
			Error       string `json:"error"`
		}
		if err := json.Unmarshal(out.Bytes(), &got); err != nil || got.Complete == nil || *got.Complete || !got.Interrupted || got.Error != "" {
			t.Fatalf("stdout is not the partial report alone (%v):\n%s", err, out.String())
		}
	}
}
