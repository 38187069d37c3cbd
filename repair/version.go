package repair

import (
	"runtime/debug"
	"sync"
)

// Version is scrubd's version. Release builds set it with
//
//	go build -ldflags "-X github.com/scrubd/scrubd/repair.Version=1.2.3" ./cmd/scrubd
//
// Every report records it (and the source revision, when the build knows it).
var Version = "0.1.0-dev"

// BuildInfo says which build this is.
type BuildInfo struct {
	Version  string `json:"version"`
	Revision string `json:"revision,omitempty"` // the VCS revision built, if known
	Modified bool   `json:"modified,omitempty"` // built from a work tree with changes
	Go       string `json:"go"`
}

var buildInfo = sync.OnceValue(func() BuildInfo {
	b := BuildInfo{Version: Version}
	if bi, ok := debug.ReadBuildInfo(); ok {
		b.Go = bi.GoVersion
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Revision = s.Value
			case "vcs.modified":
				b.Modified = s.Value == "true"
			}
		}
	}
	return b
})

// Build returns this build's version information.
func Build() BuildInfo { return buildInfo() }

// VersionString is the one-line form: "0.1.0-dev (abc1234, modified)".
func VersionString() string {
	b := Build()
	s := b.Version
	if b.Revision != "" {
		r := b.Revision
		if len(r) > 12 {
			r = r[:12]
		}
		if b.Modified {
			r += ", modified"
		}
		s += " (" + r + ")"
	}
	return s
}
