// Command upstream-continuity gives upstream containerd/continuity's own
// answers, for interop tests and benchmarks. It is a thin wrapper over the
// library (Debian's golang-github-containerd-continuity-dev ships the source
// but no CLI), built offline in GOPATH mode:
//
//	GO111MODULE=off GOPATH=$tmp:/usr/share/gocode go build -o $bin ./cmd/upstream-continuity
//
// Usage:
//
//	upstream-continuity build ROOT > manifest.pb    (NewContext + BuildManifest + Marshal)
//	upstream-continuity verify ROOT manifest.pb     (Unmarshal + VerifyManifest; exit 1 on mismatch)
//	upstream-continuity dump manifest.pb            (Unmarshal; JSON of every resource as upstream sees it)
//
// Errors go to stderr as one line "upstream-continuity: ..."; exit 1 on a
// verification mismatch, 2 on bad usage, 3 on any other failure.
package main

import (
	_ "crypto/sha256" // registers sha256 for go-digest (digest.Canonical)
	"encoding/json"
	"fmt"
	"os"
	"sort"

	"github.com/containerd/continuity"
)

type xattrJSON struct {
	Name string `json:"name"`
	Data []byte `json:"data"` // base64 in JSON
}

type resourceJSON struct {
	Paths    []string    `json:"paths"`
	Kind     string      `json:"kind"`
	Mode     uint32      `json:"mode"`      // Go os.FileMode bits, as on the wire
	ModeText string      `json:"mode_text"` // os.FileMode.String()
	UID      int64       `json:"uid"`
	GID      int64       `json:"gid"`
	Size     *int64      `json:"size,omitempty"`
	Digests  []string    `json:"digests,omitempty"`
	Target   *string     `json:"target,omitempty"`
	Major    *uint64     `json:"major,omitempty"`
	Minor    *uint64     `json:"minor,omitempty"`
	XAttrs   []xattrJSON `json:"xattrs"`
}

func fail(code int, format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "upstream-continuity: "+format+"\n", args...)
	os.Exit(code)
}

func load(path string) *continuity.Manifest {
	p, err := os.ReadFile(path)
	if err != nil {
		fail(3, "%v", err)
	}
	m, err := continuity.Unmarshal(p)
	if err != nil {
		fail(3, "unmarshal %s: %v", path, err)
	}
	return m
}

func describe(r continuity.Resource) resourceJSON {
	out := resourceJSON{
		Paths:    []string{r.Path()},
		Mode:     uint32(r.Mode()),
		ModeText: r.Mode().String(),
		UID:      r.UID(),
		GID:      r.GID(),
		XAttrs:   []xattrJSON{},
	}
	if h, ok := r.(continuity.Hardlinkable); ok {
		out.Paths = h.Paths()
	}
	if x, ok := r.(continuity.XAttrer); ok {
		xs := x.XAttrs()
		names := make([]string, 0, len(xs))
		for n := range xs {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			out.XAttrs = append(out.XAttrs, xattrJSON{Name: n, Data: xs[n]})
		}
	}
	switch t := r.(type) {
	case continuity.RegularFile:
		out.Kind = "file"
		size := t.Size()
		out.Size = &size
		for _, d := range t.Digests() {
			out.Digests = append(out.Digests, d.String())
		}
	case continuity.Directory:
		out.Kind = "dir"
	case continuity.SymLink:
		out.Kind = "symlink"
		target := t.Target()
		out.Target = &target
	case continuity.NamedPipe:
		out.Kind = "fifo"
	case continuity.Device:
		out.Kind = "device"
		major, minor := t.Major(), t.Minor()
		out.Major, out.Minor = &major, &minor
	default:
		out.Kind = "unknown"
	}
	return out
}

func main() {
	if len(os.Args) < 2 {
		fail(2, "usage: upstream-continuity build ROOT | verify ROOT MANIFEST | dump MANIFEST")
	}
	switch cmd, args := os.Args[1], os.Args[2:]; {
	case cmd == "build" && len(args) == 1:
		ctx, err := continuity.NewContext(args[0])
		if err != nil {
			fail(3, "%v", err)
		}
		m, err := continuity.BuildManifest(ctx)
		if err != nil {
			fail(3, "build: %v", err)
		}
		p, err := continuity.Marshal(m)
		if err != nil {
			fail(3, "marshal: %v", err)
		}
		if _, err := os.Stdout.Write(p); err != nil {
			fail(3, "%v", err)
		}
	case cmd == "verify" && len(args) == 2:
		m := load(args[1])
		ctx, err := continuity.NewContext(args[0])
		if err != nil {
			fail(3, "%v", err)
		}
		if err := continuity.VerifyManifest(ctx, m); err != nil {
			fail(1, "verify: %v", err)
		}
	case cmd == "dump" && len(args) == 1:
		m := load(args[0])
		out := make([]resourceJSON, 0, len(m.Resources))
		for _, r := range m.Resources {
			out = append(out, describe(r))
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", " ")
		if err := enc.Encode(map[string]interface{}{"resources": out}); err != nil {
			fail(3, "%v", err)
		}
	default:
		fail(2, "usage: upstream-continuity build ROOT | verify ROOT MANIFEST | dump MANIFEST")
	}
}
