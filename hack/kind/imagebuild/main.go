// Command imagebuild writes a container image as a docker-save archive,
// without a Docker daemon or a registry (github.com/google/go-containerregistry):
// an optional root filesystem tarball as the base layer, then one layer of
// the given files. `kind load image-archive` and `ctr images import` read
// the result.
//
//	go run ./hack/kind/imagebuild -image sluice:dev -o sluice.tar \
//	    -add bin/sluice-agent:/usr/local/bin/sluice-agent \
//	    -link /bin/sh:busybox -entrypoint /usr/local/bin/sluice-agent
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// pairs is a repeatable flag of "A:B" values.
type pairs [][2]string

func (p *pairs) String() string { return fmt.Sprint(*p) }

func (p *pairs) Set(v string) error {
	a, b, ok := strings.Cut(v, ":")
	if !ok || a == "" || b == "" {
		return fmt.Errorf("%q: want A:B", v)
	}
	*p = append(*p, [2]string{a, b})
	return nil
}

func main() {
	var adds, links pairs
	image := flag.String("image", "", "full image references, comma-separated, e.g. registry.k8s.io/pause:3.10.2 (required)")
	out := flag.String("o", "", "archive to write (required)")
	base := flag.String("base", "", "root filesystem tarball for the base layer (none: the image holds only the added files)")
	entrypoint := flag.String("entrypoint", "", "entrypoint, arguments separated by spaces")
	user := flag.String("user", "", "user the image runs as (empty: root)")
	flag.Var(&adds, "add", "SRC:DST: put the file SRC at DST in the image, mode kept (repeatable)")
	flag.Var(&links, "link", "DST:TARGET: a symbolic link at DST to TARGET (repeatable)")
	flag.Parse()
	if *image == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "imagebuild: -image and -o are required")
		flag.Usage()
		os.Exit(2)
	}
	if err := build(strings.Split(*image, ","), *out, *base, strings.Fields(*entrypoint), *user, adds, links); err != nil {
		fmt.Fprintf(os.Stderr, "imagebuild: %s: %v\n", *image, err)
		os.Exit(1)
	}
}

func build(images []string, out, base string, entrypoint []string, user string, adds, links pairs) error {
	var refs []name.Tag
	for _, image := range images {
		ref, err := name.NewTag(image)
		if err != nil {
			return fmt.Errorf("-image: %w", err)
		}
		refs = append(refs, ref)
	}
	img := empty.Image
	if base != "" {
		l, err := tarball.LayerFromFile(base)
		if err != nil {
			return fmt.Errorf("-base: %w", err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			return err
		}
	}
	files, err := filesLayer(adds, links)
	if err != nil {
		return err
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(files)), nil })
	if err != nil {
		return err
	}
	if img, err = mutate.AppendLayers(img, l); err != nil {
		return err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Created = v1.Time{Time: time.Unix(0, 0).UTC()} // reproducible digests
	cfg.Config.Entrypoint = entrypoint
	cfg.Config.User = user
	cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return err
	}
	tagged := map[name.Tag]v1.Image{}
	for _, ref := range refs {
		tagged[ref] = img
	}
	tmp := out + ".tmp"
	if err := tarball.MultiWriteToFile(tmp, tagged); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

// filesLayer is an uncompressed tar of the added files and links, with
// their parent directories, in a stable order.
func filesLayer(adds, links pairs) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	mkdirs := func(p string) error {
		var parents []string
		for d := path.Dir(p); d != "/" && d != "." && !dirs[d]; d = path.Dir(d) {
			parents = append(parents, d)
			dirs[d] = true
		}
		slices.Reverse(parents)
		for _, d := range parents {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755}); err != nil {
				return err
			}
		}
		return nil
	}
	for _, a := range adds {
		src, dst := a[0], path.Clean(a[1])
		if !path.IsAbs(dst) {
			return nil, fmt.Errorf("-add %s:%s: the destination must be absolute", src, a[1])
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return nil, fmt.Errorf("-add: %w", err)
		}
		st, err := os.Stat(src)
		if err != nil {
			return nil, err
		}
		if err := mkdirs(dst); err != nil {
			return nil, err
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(dst, "/"), Mode: int64(st.Mode().Perm()), Size: int64(len(data))}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	for _, l := range links {
		dst := path.Clean(l[0])
		if !path.IsAbs(dst) {
			return nil, fmt.Errorf("-link %s:%s: the link must be absolute", l[0], l[1])
		}
		if err := mkdirs(dst); err != nil {
			return nil, err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: strings.TrimPrefix(dst, "/"), Linkname: l[1], Mode: 0o777}); err != nil {
			return nil, err
		}
	}
	if len(adds)+len(links) == 0 {
		return nil, errors.New("nothing to add: give -add or -link")
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
