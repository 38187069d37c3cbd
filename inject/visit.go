package inject

import (
	"fmt"

	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
)

// btreeVisitor calls fn for every readable node and records the first
// problem in *perr.
func btreeVisitor(fn func(n format.Node, b format.BlockNr), perr *error) eb.CheckVisitor {
	return eb.CheckVisitor{
		Node: func(n format.Node, p eb.Ptr) { fn(n, p.Block) },
		Problem: func(p eb.Problem) {
			if *perr == nil {
				*perr = fmt.Errorf("%s", p)
			}
		},
	}
}
