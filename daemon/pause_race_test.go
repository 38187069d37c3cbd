package daemon

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/scrubd/scrubd/repair"
)

// TestServePauseAfterWork holds a background scrub after its work ended
// and before the server records it (the window a late pause or cancel
// used to fall in: the run was then reported paused, or cancelled, while
// it finished clean). There, pause, resume and cancel answer idle, "the
// scrub already finished: clean"; the status is not paused; released, the
// run is recorded clean, not interrupted, and the mount goes idle.
func TestServePauseAfterWork(t *testing.T) {
	runtimeDir(t)
	fsys, img := openFS(t)
	s, mnt := serve(t, fsys, img, Options{NoHistory: true})
	held, release := make(chan struct{}), make(chan struct{})
	s.afterScrub = func() {
		close(held)
		<-release
	}
	if _, err := s.startBackground(Request{Op: OpScrub, Data: true, Background: true}, "request"); err != nil {
		t.Fatal(err)
	}
	<-held
	c := dial(t, mnt)
	ctx := context.Background()
	for _, op := range []func(context.Context) (*Status, error){c.Pause, c.Resume, c.Cancel} {
		var re *RemoteError
		st, err := op(ctx)
		if !errors.As(err, &re) || re.Code != CodeIdle || !strings.Contains(re.Msg, "already finished: "+repair.StatusClean) {
			close(release)
			t.Fatalf("control after the scrub's work ended: %+v, %v", st, err)
		}
	}
	st, err := c.Status(ctx)
	if err != nil || st.State != "running" || st.Progress == nil || st.Progress.Paused || !st.Progress.WorkEnded {
		close(release)
		t.Fatalf("status after the work ended: %+v %v", st, err)
	}
	close(release)
	s.bg.Wait()
	st, err = c.Status(ctx)
	if err != nil || st.State != "idle" || st.Progress != nil {
		t.Fatalf("status after the run: %+v %v", st, err)
	}
	if l := st.LastScrub; l == nil || l.Status != repair.StatusClean || l.Interrupted || l.Report == nil || !l.Report.Complete {
		t.Fatalf("last scrub: %+v", st.LastScrub)
	}
	var re *RemoteError
	if _, err := c.Pause(ctx); !errors.As(err, &re) || re.Code != CodeIdle || !strings.Contains(re.Msg, "no scrub is running") {
		t.Fatalf("pause once idle: %v", err)
	}
}
