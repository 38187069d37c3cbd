package repair

import (
	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// The root tree's checker: every root item must decode (the walk itself
// already read each tree from its item).
var rootCheck = &checker{items: map[format.TreeID]func(*checkState, format.BlockNr, format.Key, []byte){
	format.TreeRoot: func(st *checkState, root format.BlockNr, k format.Key, val []byte) {
		if k.Type != format.TypeRootItem {
			return
		}
		if _, err := format.DecodeRootItem(val); err != nil {
			st.Reportf(engine.ErrItemBad, format.TreeRoot, root, "root item %s: %v", k, err)
		}
	},
}}
