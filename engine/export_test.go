package engine

import (
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
)

// createTreeForTest adds a tree this build does not know, as a newer
// version would.
func (e *Engine) createTreeForTest(id format.TreeID) error {
	return e.Update(func(tx *Tx) error {
		tr, err := eb.Create(txnStore{e}, id)
		if err != nil {
			return err
		}
		e.trees[id] = tr
		return tr.Insert(format.Key{Obj: 1}, []byte("from the future"))
	})
}

func btreeVisitor(fn func(format.BlockNr)) eb.CheckVisitor {
	return eb.CheckVisitor{Block: func(p eb.Ptr, _ int) { fn(p.Block) }}
}
