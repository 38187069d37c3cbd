package repair

import (
	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// markHealth records a full check of e at generation gen in the engine's
// per-structure health: every structure with findings is sick (with their
// ids), every other one healthy.
func markHealth(e *engine.Engine, gen format.Gen, found []engine.Finding) {
	ids := map[engine.Structure][]engine.ErrorID{}
	for _, f := range found {
		if s, ok := engine.StructureOfTree(f.Tree); ok {
			ids[s] = append(ids[s], f.ID)
		}
	}
	for _, s := range engine.Structures() {
		e.MarkChecked(s, gen, ids[s])
	}
}
