package main

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// The archive is what `ctr images import` reads: every tag resolves to an
// image whose filesystem holds the added file (mode kept), its parent
// directories and the links, and whose config runs the entrypoint.
func TestBuildWritesTaggedImages(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "agent")
	if err := os.WriteFile(src, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "image.tar")
	tags := []string{"registry.k8s.io/e2e-test-images/agnhost:2.53", "sluice:dev"}
	err := build(tags, out, "", []string{"/usr/local/bin/agent", "--flag"}, "65535:65535",
		pairs{{src, "/usr/local/bin/agent"}}, pairs{{"/bin/sh", "busybox"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tag := range tags {
		ref, err := name.NewTag(tag)
		if err != nil {
			t.Fatal(err)
		}
		img, err := tarball.ImageFromPath(out, &ref)
		if err != nil {
			t.Fatalf("%s not in the archive: %v", tag, err)
		}
		cfg, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(cfg.Config.Entrypoint, []string{"/usr/local/bin/agent", "--flag"}) || cfg.Config.User != "65535:65535" || cfg.OS != "linux" {
			t.Errorf("%s: config %+v", tag, cfg.Config)
		}
		got := map[string]*tar.Header{}
		tr := tar.NewReader(mutate.Extract(img))
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			got[strings.TrimSuffix(h.Name, "/")] = h
		}
		if h := got["usr/local/bin/agent"]; h == nil || h.Mode != 0o755 || h.Size != 12 {
			t.Errorf("%s: the added file is missing or changed: %+v", tag, h)
		}
		for _, d := range []string{"usr", "usr/local", "usr/local/bin"} {
			if h := got[d]; h == nil || h.Typeflag != tar.TypeDir {
				t.Errorf("%s: parent directory %s missing", tag, d)
			}
		}
		if h := got["bin/sh"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "busybox" {
			t.Errorf("%s: link /bin/sh -> busybox missing: %+v", tag, h)
		}
	}
}

func TestBuildRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "image.tar")
	for what, err := range map[string]error{
		"relative destination": build([]string{"x:1"}, out, "", nil, "", pairs{{"/etc/hostname", "etc/hostname"}}, nil),
		"missing source":       build([]string{"x:1"}, out, "", nil, "", pairs{{filepath.Join(dir, "none"), "/x"}}, nil),
		"nothing to add":       build([]string{"x:1"}, out, "", nil, "", nil, nil),
		"bad reference":        build([]string{"Not A Ref"}, out, "", nil, "", pairs{{"/etc/hostname", "/x"}}, nil),
	} {
		if err == nil {
			t.Errorf("%s: no error", what)
		}
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("a failed build left an archive behind")
	}
}
