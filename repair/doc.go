// Package repair checks and repairs scrubd images: one checker and one
// repairer per structure, the orchestration that runs them in phases, and
// the reports they produce.
//
// Findings are data (engine.Finding with a stable id and name); errors
// returned by this package are operational failures only. A report's
// status maps to fsck(8) exit codes: 0 clean, 1 errors corrected, 4 errors
// left uncorrected, 8 operational error.
package repair
