package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
)

// The mount's configuration file (--config FILE): YAML, one key per flag
// of "scrubd mount" and the global flags, named as the flags are, plus
// "image" and "mountpoint" for the two arguments. A flag given on the
// command line wins over the file. Unknown keys and bad values are errors
// naming the key (and the line).

// configArgs are the keys a file may hold beyond the flags.
var configArgs = []string{"image", "mountpoint"}

// applyConfig reads path and sets, on cmd, every flag it names that the
// command line did not set; it returns the image and mountpoint it names
// ("" if not).
func applyConfig(cmd *cobra.Command, path string) (image, mountpoint string, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", "", usageError(fmt.Errorf("--config: %w", err))
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return "", "", nil // empty file
		}
		return "", "", usageError(fmt.Errorf("config %s: %w", path, err))
	}
	if len(doc.Content) == 0 {
		return "", "", nil
	}
	m := doc.Content[0]
	if m.Kind != yaml.MappingNode {
		return "", "", usageError(fmt.Errorf("config %s: line %d: want a mapping of flag names to values", path, m.Line))
	}
	flags := cmd.Flags()
	seen := map[string]bool{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		key := k.Value
		bad := func(f string, args ...any) error {
			return usageError(fmt.Errorf("config %s: line %d: key %q: %s", path, k.Line, key, fmt.Sprintf(f, args...)))
		}
		if seen[key] {
			return "", "", bad("given twice")
		}
		seen[key] = true
		if slices.Contains(configArgs, key) {
			if v.Kind != yaml.ScalarNode || v.Value == "" {
				return "", "", bad("want a path")
			}
			if key == "image" {
				image = v.Value
			} else {
				mountpoint = v.Value
			}
			continue
		}
		f := flags.Lookup(key)
		if f == nil || key == "config" || key == "help" {
			return "", "", bad("no such setting (the keys are the flags of scrubd mount, without --, and image, mountpoint)")
		}
		if f.Changed {
			continue // the command line wins
		}
		var vals []string
		switch v.Kind {
		case yaml.ScalarNode:
			vals = []string{v.Value}
		case yaml.SequenceNode:
			if !strings.HasSuffix(f.Value.Type(), "Array") && !strings.HasSuffix(f.Value.Type(), "Slice") {
				return "", "", bad("takes one value, not a list")
			}
			for _, e := range v.Content {
				if e.Kind != yaml.ScalarNode {
					return "", "", bad("want a list of values")
				}
				vals = append(vals, e.Value)
			}
		default:
			return "", "", bad("want a value")
		}
		for _, val := range vals {
			if err := flags.Set(key, val); err != nil {
				return "", "", bad("%v", err)
			}
		}
	}
	return image, mountpoint, nil
}
