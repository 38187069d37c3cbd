package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/scrubd/scrubd/daemon"
	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
)

// subvolDoc is what create, show, delete and set-received-uuid print
// with --json.
type subvolDoc struct {
	Version int `json:"version"`
	// Mountpoint (a mount's) or Image (offline) says where it was done.
	Mountpoint string        `json:"mountpoint,omitempty"`
	Image      string        `json:"image,omitempty"`
	Subvol     fs.SubvolInfo `json:"subvol"`
	// Freed, for delete: whether the subvolume's space was freed before
	// the command returned (--wait, and always offline).
	Freed *bool `json:"freed,omitempty"`
}

// subvolListDoc is what list prints with --json.
type subvolListDoc struct {
	Version    int             `json:"version"`
	Mountpoint string          `json:"mountpoint,omitempty"`
	Image      string          `json:"image,omitempty"`
	Subvols    []fs.SubvolInfo `json:"subvols"`
}

// subvolFindDoc is what find prints with --json.
type subvolFindDoc struct {
	Version    int    `json:"version"`
	Mountpoint string `json:"mountpoint,omitempty"`
	Image      string `json:"image,omitempty"`
	UUID       string `json:"uuid"`
	// Own and Received are the ids whose UUID, or received UUID, is
	// UUID; Subvols describes them.
	Own      []uint64        `json:"own"`
	Received []uint64        `json:"received"`
	Subvols  []fs.SubvolInfo `json:"subvols"`
}

const subvolExitStatus = `EXIT STATUS
  0 done (find: also when nothing has the UUID); 1 failure: the path is
  not inside a scrubd mount, the image is mounted (use the mountpoint) or
  cannot be opened, or the filesystem refused (not a subvolume, the name
  exists, the subvolume holds other subvolumes, no such subvolume, a
  read-only subvolume, a snapshot still being filled, the image's format
  predates subvolumes or snapshots: upgrade it to 1.7 or 1.8); 2 usage
  error (missing or extra arguments, an unknown subcommand, a bad UUID).`

// subvolOptions are the flags every subvol subcommand takes.
type subvolOptions struct {
	image  string
	asJSON bool
}

func (o *subvolOptions) flags(c *cobra.Command) {
	c.Flags().StringVar(&o.image, "image", "", "work offline on this unmounted image file; PATH is then a path inside it (/vols/a)")
	c.Flags().BoolVar(&o.asJSON, "json", false, "print one JSON object")
}

// newSubvolCmd is "scrubd subvol".
func newSubvolCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "subvol COMMAND",
		Short: "Create, snapshot, list, show, find and delete subvolumes",
		Long: `Manage the subvolumes of a scrubd filesystem (format 1.7): directories whose
contents form their own subvolume, with a UUID, a received UUID and a
creation generation. A rename or hard link from one subvolume into another
fails with EXDEV (mv copies instead) and rmdir of a subvolume with EPERM:
"scrubd subvol delete" deletes one. "scrubd subvol snapshot" (format 1.8)
makes a subvolume that holds what another held at that moment.

Each command works on a mounted filesystem, through the control socket of
the scrubd mount holding PATH (any path inside the mount), or offline on an
unmounted image with --image IMAGE, PATH then being a path inside the image
(/vols/a). An image that a scrubd mount serves is refused offline.

` + subvolExitStatus,
		Example: `  scrubd subvol create /mnt/fs/vols/home
  scrubd subvol list /mnt/fs --json
  scrubd subvol show /mnt/fs/vols/home
  scrubd subvol find /mnt/fs --uuid 2b6f0c1e-8d3a-4b8e-9f4e-5a1d2c3b4a59
  scrubd subvol set-received-uuid /mnt/fs/vols/home 2b6f0c1e-8d3a-4b8e-9f4e-5a1d2c3b4a59
  scrubd subvol snapshot /mnt/fs/vols/home /mnt/fs/snaps/home-monday --readonly
  scrubd subvol delete /mnt/fs/vols/home --wait
  scrubd subvol list --image fs.img`,
		// Runnable, so that an unknown subcommand ("scrubd subvol
		// nosuch") is a usage error rather than the help.
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	c.AddCommand(newSubvolCreateCmd(), newSubvolSnapshotCmd(), newSubvolListCmd(), newSubvolShowCmd(), newSubvolDeleteCmd(),
		newSubvolFindCmd(), newSubvolSetReceivedCmd())
	for _, sc := range c.Commands() {
		usageErrors(sc)
	}
	return c
}

func newSubvolCreateCmd() *cobra.Command {
	var o subvolOptions
	c := &cobra.Command{
		Use:   "create PATH [--image IMAGE] [--json]",
		Short: "Make an empty subvolume at PATH",
		Long: `Make an empty subvolume at PATH, whose parent directory must exist and must
not hold the name. It gets a new random UUID; its generation is the commit
that made it. What is made inside it later belongs to it.

` + subvolExitStatus,
		Example: `  scrubd subvol create /mnt/fs/vols/home
  scrubd subvol create --image fs.img /vols/home --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			res, where, err := runSubvol(cmd, o, daemon.Request{Op: daemon.OpSubvolCreate}, args[0])
			if err != nil {
				return err
			}
			info := res.Subvols[0]
			if o.asJSON {
				return printJSON(cmd.OutOrStdout(), where.doc(info, nil))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "created subvolume %d at %s (uuid %s)\n", info.ID, where.show(info.Path), info.UUID)
			return nil
		},
	}
	o.flags(c)
	return c
}

func newSubvolSnapshotCmd() *cobra.Command {
	var o subvolOptions
	var readonly, wait bool
	c := &cobra.Command{
		Use:   "snapshot SRC DST [--readonly] [--wait] [--image IMAGE] [--json]",
		Short: "Make DST a snapshot of the subvolume rooted at SRC",
		Long: `Make DST a new subvolume holding exactly what the subvolume rooted at SRC
holds at this moment (format 1.8), read-only with --readonly. DST's parent
directory must exist and must not hold the name; both paths must be in one
filesystem. The snapshot's parent UUID is SRC's UUID.

The command returns, with the snapshot durable, in a time that does not
depend on SRC's size: only SRC's root directory is copied then. File data
is never copied (the snapshot shares SRC's blocks until either side
changes them). The rest of SRC's metadata is copied into the snapshot in
the background (its fill; "filling" in the flags until it ends) while
both are in use: the snapshot reads what it has not copied yet from SRC,
and SRC copies a file into the snapshot before it changes it. With --wait
the command returns once the fill has ended; offline it always waits.

Refused: the top level (snapshot a subvolume), a subvolume holding other
subvolumes, a snapshot whose own fill has not ended, a DST inside a
read-only subvolume. A subvolume is not deleted while a snapshot of it
is being filled. A read-only snapshot refuses every change (EROFS); it
can be deleted with "scrubd subvol delete".

` + subvolExitStatus,
		Example: `  scrubd subvol snapshot /mnt/fs/vols/home /mnt/fs/snaps/home-monday --readonly
  scrubd subvol snapshot /mnt/fs/vols/db /mnt/fs/vols/db-test --wait --json
  scrubd subvol snapshot --image fs.img /vols/home /snaps/home-1`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := daemon.Request{Op: daemon.OpSubvolSnapshot, ReadOnly: readonly, Wait: wait || o.image != ""}
			var res *daemon.SubvolResult
			var where subvolWhere
			var err error
			if o.image != "" {
				where.image = o.image
				req.Path, req.Dest = args[0], args[1]
				res, err = subvolOffline(cmd, o.image, req)
			} else {
				var smnt, dmnt string
				if smnt, req.Path, err = daemon.Locate(args[0]); err != nil {
					return err
				}
				if dmnt, req.Dest, err = daemon.Locate(args[1]); err != nil {
					return err
				}
				if smnt != dmnt {
					return fmt.Errorf("%s and %s are in different mounts (%s, %s): a snapshot is made in its source's filesystem", args[0], args[1], smnt, dmnt)
				}
				where.mountpoint = smnt
				var cl *daemon.Client
				if cl, err = daemon.Dial(smnt); err != nil {
					return err
				}
				defer cl.Close()
				res, err = cl.Subvol(cmd.Context(), req)
			}
			if err != nil {
				var re *daemon.RemoteError
				if errors.Is(err, daemon.ErrBadArgument) || (errors.As(err, &re) && re.Code == daemon.CodeBadRequest) {
					return usageError(fmt.Errorf("%s: %w", args[0], err))
				}
				return fmt.Errorf("snapshot %s as %s: %w", args[0], args[1], err)
			}
			if len(res.Subvols) != 1 {
				return fmt.Errorf("%s answered %d subvolumes, want 1", req.Op, len(res.Subvols))
			}
			info := res.Subvols[0]
			if o.asJSON {
				return printJSON(cmd.OutOrStdout(), where.doc(info, nil))
			}
			kind := "snapshot"
			if info.ReadOnly {
				kind = "read-only snapshot"
			}
			fill := "filled"
			if info.Filling {
				fill = "being filled in the background"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "made %s %d at %s (uuid %s, parent uuid %s); %s\n", kind, info.ID, where.show(info.Path), info.UUID, info.ParentUUID, fill)
			return nil
		},
	}
	o.flags(c)
	c.Flags().BoolVar(&readonly, "readonly", false, "make a read-only snapshot (every change in it is refused)")
	c.Flags().BoolVar(&wait, "wait", false, "return only once the snapshot's fill has ended")
	return c
}

func newSubvolListCmd() *cobra.Command {
	var o subvolOptions
	c := &cobra.Command{
		Use:   "list MOUNTPOINT | list --image IMAGE [--json]",
		Short: "List every subvolume of a filesystem",
		Long: `List every subvolume of the filesystem mounted at MOUNTPOINT (any path inside
the mount will do), or of IMAGE offline, by id: its path from the top of
the filesystem, UUID, parent and received UUIDs, generation, creation
time and flags (readonly; deleting while the background reaper frees a
deleted one's space, with no path).

` + subvolExitStatus,
		Example: `  scrubd subvol list /mnt/fs
  scrubd subvol list --image fs.img --json | jq '.subvols[].path'`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			target, err := oneTarget(o, args, "MOUNTPOINT")
			if err != nil {
				return err
			}
			res, where, err := runSubvol(cmd, o, daemon.Request{Op: daemon.OpSubvolList}, target)
			if err != nil {
				return err
			}
			if o.asJSON {
				return printJSON(cmd.OutOrStdout(), subvolListDoc{Version: jsonVersion, Mountpoint: where.mountpoint, Image: where.image, Subvols: res.Subvols})
			}
			printSubvolTable(cmd.OutOrStdout(), res.Subvols, nil)
			return nil
		},
	}
	o.flags(c)
	return c
}

func newSubvolShowCmd() *cobra.Command {
	var o subvolOptions
	c := &cobra.Command{
		Use:   "show PATH [--image IMAGE] [--json]",
		Short: "Describe the subvolume rooted at PATH",
		Long: `Describe the subvolume whose root directory is PATH: id, path, UUID, parent
and received UUIDs, generation, creation time, flags and root inode. A
PATH that is not a subvolume's root (the top of the filesystem included)
fails.

` + subvolExitStatus,
		Example: `  scrubd subvol show /mnt/fs/vols/home
  scrubd subvol show --image fs.img /vols/home --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			res, where, err := runSubvol(cmd, o, daemon.Request{Op: daemon.OpSubvolShow}, args[0])
			if err != nil {
				return err
			}
			info := res.Subvols[0]
			if o.asJSON {
				return printJSON(cmd.OutOrStdout(), where.doc(info, nil))
			}
			printSubvol(cmd.OutOrStdout(), where.show(info.Path), info)
			return nil
		},
	}
	o.flags(c)
	return c
}

func newSubvolDeleteCmd() *cobra.Command {
	var o subvolOptions
	var wait bool
	c := &cobra.Command{
		Use:   "delete PATH [--wait] [--image IMAGE] [--json]",
		Short: "Delete the subvolume rooted at PATH",
		Long: `Delete the subvolume whose root directory is PATH. Its name goes at once
(its files are gone from the mount when the command returns); a
background reaper then frees its inodes and space, and removes it from
the list when done (interrupted, the next mount finishes it). With --wait
the command returns only once the reaper has freed it. Offline the
command always waits. A subvolume holding other subvolumes is refused:
delete those first. A PATH that is not a subvolume's root (a plain
directory) is refused too: remove it as usual.

` + subvolExitStatus,
		Example: `  scrubd subvol delete /mnt/fs/vols/home
  scrubd subvol delete /mnt/fs/vols/home --wait --json
  scrubd subvol delete --image fs.img /vols/home`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := daemon.Request{Op: daemon.OpSubvolDelete, Wait: wait || o.image != ""}
			res, where, err := runSubvol(cmd, o, req, args[0])
			if err != nil {
				return err
			}
			info := res.Subvols[0]
			if o.asJSON {
				return printJSON(cmd.OutOrStdout(), where.doc(info, &req.Wait))
			}
			freed := "its space is freed in the background"
			if req.Wait {
				freed = "its space is freed"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted subvolume %d (%s); %s\n", info.ID, where.show(info.Path), freed)
			return nil
		},
	}
	o.flags(c)
	c.Flags().BoolVar(&wait, "wait", false, "return only once the subvolume's space is freed and it has left the list")
	return c
}

func newSubvolFindCmd() *cobra.Command {
	var o subvolOptions
	var uuid string
	c := &cobra.Command{
		Use:   "find MOUNTPOINT --uuid UUID | find --image IMAGE --uuid UUID [--json]",
		Short: "Find the subvolumes whose UUID or received UUID is UUID",
		Long: `Find the subvolumes of the filesystem mounted at MOUNTPOINT (any path inside
the mount will do), or of IMAGE offline, whose own UUID or received UUID
is UUID, from the filesystem's uuid tree. UUID is 32 hex digits, with or
without the dashes. Finding nothing is not an error: the lists are empty.

` + subvolExitStatus,
		Example: `  scrubd subvol find /mnt/fs --uuid 2b6f0c1e-8d3a-4b8e-9f4e-5a1d2c3b4a59
  scrubd subvol find --image fs.img --uuid 2b6f0c1e8d3a4b8e9f4e5a1d2c3b4a59 --json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			target, err := oneTarget(o, args, "MOUNTPOINT")
			if err != nil {
				return err
			}
			if uuid == "" {
				return usageError(fmt.Errorf("find needs --uuid UUID\nSee '%s --help'.", cmd.CommandPath()))
			}
			u, err := format.ParseUUID(uuid)
			if err != nil {
				return usageError(fmt.Errorf("--uuid: %w", err))
			}
			res, where, err := runSubvol(cmd, o, daemon.Request{Op: daemon.OpSubvolFind, UUID: u.String()}, target)
			if err != nil {
				return err
			}
			doc := subvolFindDoc{Version: jsonVersion, Mountpoint: where.mountpoint, Image: where.image, UUID: u.String(),
				Own: nonNilIDs(res.Own), Received: nonNilIDs(res.Received), Subvols: res.Subvols}
			if o.asJSON {
				return printJSON(cmd.OutOrStdout(), doc)
			}
			if len(doc.Subvols) == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "no subvolume has UUID %s\n", doc.UUID)
				return nil
			}
			match := map[uint64]string{}
			for _, id := range doc.Received {
				match[id] = "received"
			}
			for _, id := range doc.Own {
				match[id] = "uuid"
			}
			printSubvolTable(cmd.OutOrStdout(), doc.Subvols, match)
			return nil
		},
	}
	o.flags(c)
	c.Flags().StringVar(&uuid, "uuid", "", "the UUID to look for (32 hex digits, dashes optional)")
	return c
}

func newSubvolSetReceivedCmd() *cobra.Command {
	var o subvolOptions
	c := &cobra.Command{
		Use:   "set-received-uuid PATH UUID [--image IMAGE] [--json]",
		Short: "Set the received UUID of the subvolume rooted at PATH",
		Long: `Set the received UUID of the subvolume whose root directory is PATH: the UUID
of the subvolume it was received from (as a receive does). "scrubd subvol
find --uuid UUID" then finds it as received. A UUID of all zeros clears it.

` + subvolExitStatus,
		Example: `  scrubd subvol set-received-uuid /mnt/fs/vols/home 2b6f0c1e-8d3a-4b8e-9f4e-5a1d2c3b4a59
  scrubd subvol set-received-uuid /mnt/fs/vols/home 00000000-0000-0000-0000-000000000000`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			u, err := format.ParseUUID(args[1])
			if err != nil {
				return usageError(fmt.Errorf("UUID: %w", err))
			}
			res, where, err := runSubvol(cmd, o, daemon.Request{Op: daemon.OpSubvolSetReceived, UUID: u.String()}, args[0])
			if err != nil {
				return err
			}
			info := res.Subvols[0]
			if o.asJSON {
				return printJSON(cmd.OutOrStdout(), where.doc(info, nil))
			}
			if u.IsZero() {
				fmt.Fprintf(cmd.OutOrStdout(), "subvolume %d (%s): received uuid cleared\n", info.ID, where.show(info.Path))
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "subvolume %d (%s): received uuid %s\n", info.ID, where.show(info.Path), info.ReceivedUUID)
			}
			return nil
		},
	}
	o.flags(c)
	return c
}

// oneTarget checks the arguments of list and find: a path inside the
// mount, or none with --image.
func oneTarget(o subvolOptions, args []string, what string) (string, error) {
	switch {
	case o.image == "" && len(args) == 0:
		return "", usageError(fmt.Errorf("needs %s (or --image IMAGE)", what))
	case o.image != "" && len(args) > 0:
		return "", usageError(fmt.Errorf("with --image, takes no %s (%q)", what, args[0]))
	case o.image != "":
		return "", nil
	}
	return args[0], nil
}

// subvolWhere says where a subvolume command ran: a mount or an image.
type subvolWhere struct {
	mountpoint, image string
}

// show is how a path of the filesystem is shown to people: below the
// mountpoint, or with the image named.
func (w subvolWhere) show(p string) string {
	switch {
	case p == "":
		return "being deleted"
	case w.mountpoint != "":
		return filepath.Join(w.mountpoint, filepath.FromSlash(p))
	}
	return p + " in " + w.image
}

func (w subvolWhere) doc(info fs.SubvolInfo, freed *bool) subvolDoc {
	return subvolDoc{Version: jsonVersion, Mountpoint: w.mountpoint, Image: w.image, Subvol: info, Freed: freed}
}

// runSubvol sends req to the mount holding target, or with --image runs
// it on the image (target then a path inside it, or "" for list and
// find). Its errors name target; a malformed request is a usage error.
func runSubvol(cmd *cobra.Command, o subvolOptions, req daemon.Request, target string) (*daemon.SubvolResult, subvolWhere, error) {
	takesPath := req.Op != daemon.OpSubvolList && req.Op != daemon.OpSubvolFind
	var res *daemon.SubvolResult
	var where subvolWhere
	var err error
	if o.image != "" {
		where.image = o.image
		if takesPath {
			req.Path = target
		}
		res, err = subvolOffline(cmd, o.image, req)
	} else {
		var mnt, rel string
		if mnt, rel, err = daemon.Locate(target); err != nil {
			return nil, where, err
		}
		where.mountpoint = mnt
		if takesPath {
			req.Path = rel
		}
		var cl *daemon.Client
		if cl, err = daemon.Dial(mnt); err != nil {
			return nil, where, err
		}
		defer cl.Close()
		res, err = cl.Subvol(cmd.Context(), req)
	}
	if err != nil {
		var re *daemon.RemoteError
		if errors.Is(err, daemon.ErrBadArgument) || (errors.As(err, &re) && re.Code == daemon.CodeBadRequest) {
			return nil, where, usageError(fmt.Errorf("%s: %w", target, err))
		}
		if takesPath {
			return nil, where, fmt.Errorf("%s: %w", target, err)
		}
		return nil, where, err
	}
	if takesPath && len(res.Subvols) != 1 {
		return nil, where, fmt.Errorf("%s: %s answered %d subvolumes, want 1", target, req.Op, len(res.Subvols))
	}
	return res, where, nil
}

// subvolOffline opens image (read-only for list, show and find; never
// upgrading its format), runs req and closes it.
func subvolOffline(cmd *cobra.Command, image string, req daemon.Request) (*daemon.SubvolResult, error) {
	log, err := logger()
	if err != nil {
		return nil, err
	}
	if err := checkOffline(image); err != nil {
		return nil, err
	}
	ro := req.Op == daemon.OpSubvolList || req.Op == daemon.OpSubvolShow || req.Op == daemon.OpSubvolFind
	// (A read-only open of an image with a snapshot being filled reads
	// that snapshot's files only once a read-write open finished it.)
	f, err := fs.OpenPath(image, fs.Options{ReadOnly: ro, CommitInterval: -1, Logger: log,
		Engine: engine.Options{VersionUpgrade: engine.UpgradeNone}})
	if err != nil {
		return nil, err
	}
	res, err := daemon.SubvolCall(cmd.Context(), f, req)
	if cerr := f.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("close %s: %w", image, cerr))
	}
	return res, err
}

func nonNilIDs(ids []uint64) []uint64 {
	if ids == nil {
		return []uint64{}
	}
	return ids
}

// dash shows an empty field as "-".
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func subvolFlags(info fs.SubvolInfo) string {
	var f []string
	if info.ReadOnly {
		f = append(f, "readonly")
	}
	if info.Deleting {
		f = append(f, "deleting")
	}
	if info.Filling {
		f = append(f, "filling")
	}
	return dash(strings.Join(f, ","))
}

const subvolTime = "2006-01-02 15:04:05 -0700"

// printSubvolTable prints subvolumes one a line (with match, a MATCH
// column saying which UUID matched).
func printSubvolTable(w io.Writer, infos []fs.SubvolInfo, match map[uint64]string) {
	if len(infos) == 0 {
		fmt.Fprintln(w, "no subvolumes")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := "ID\tGEN\tCREATED\tFLAGS\tUUID\tPARENT UUID\tRECEIVED UUID\tPATH"
	if match != nil {
		head = "MATCH\t" + head
	}
	fmt.Fprintln(tw, head)
	for _, s := range infos {
		if match != nil {
			fmt.Fprintf(tw, "%s\t", match[s.ID])
		}
		p := s.Path
		if p == "" {
			p = "(being deleted)"
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, s.Generation, s.CTime.Local().Format(subvolTime), subvolFlags(s),
			s.UUID, dash(s.ParentUUID), dash(s.ReceivedUUID), p)
	}
	tw.Flush()
}

// printSubvol prints one subvolume, a field a line.
func printSubvol(w io.Writer, title string, s fs.SubvolInfo) {
	fmt.Fprintln(w, title)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, f := range [][2]string{
		{"id", fmt.Sprint(s.ID)},
		{"path", dash(s.Path)},
		{"uuid", s.UUID},
		{"parent uuid", dash(s.ParentUUID)},
		{"received uuid", dash(s.ReceivedUUID)},
		{"generation", fmt.Sprint(s.Generation)},
		{"created", s.CTime.Local().Format(subvolTime)},
		{"flags", subvolFlags(s)},
		{"root inode", fmt.Sprint(s.RootIno)},
	} {
		fmt.Fprintf(tw, "\t%s:\t%s\n", f[0], f[1])
	}
	tw.Flush()
}
