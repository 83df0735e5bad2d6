package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDrawAll draws two charts from small files: each SVG names its title and every
// series; a file benchplot does not know is left alone, and a malformed one is refused
// with its line.
func TestDrawAll(t *testing.T) {
	in, out := t.TempDir(), t.TempDir()
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(in, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("throughput.tsv", "# a note\ndevices\twhoami hot\tdeviceid hot\tdeviceid fastpath hot\n1000\t100\t90\t190\n100000\t80\t\t150\n")
	write("enrollment.tsv", "how\tper second\nraw puts\t9000\nwith a CSR\t2500\n")
	write("other.tsv", "not\ta chart\n")
	written, err := drawAll(in, out)
	if err != nil {
		t.Fatal(err)
	}
	if len(written) != 2 {
		t.Errorf("wrote %v, want enrollment.svg and throughput.svg", written)
	}
	for file, want := range map[string][]string{
		"throughput.svg": {"<svg", charts["throughput"].title, "whoami hot", "deviceid hot", "deviceid fastpath hot", "100,000"},
		"enrollment.svg": {"<svg", charts["enrollment"].title, "per second", "raw puts", "with a CSR"},
	} {
		b, err := os.ReadFile(filepath.Join(out, file))
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range want {
			if !strings.Contains(string(b), w) {
				t.Errorf("%s lacks %q", file, w)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(out, "other.svg")); err == nil {
		t.Error("drew a file no chart names")
	}

	for text, want := range map[string]string{
		"devices\twhoami\n1000\t100\t90\n": "throughput.tsv:2: 3 cells",
		"devices\twhoami\n1000\tfast\n":    `"fast" is not a number`,
		"# only a note\ndevices\twhoami\n": "no figures",
		"devices\n1000\n":                  "no series",
	} {
		write("throughput.tsv", text)
		if _, err := drawAll(in, out); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", text, err, want)
		}
	}
	if _, err := drawAll(t.TempDir(), out); err == nil {
		t.Error("a directory without a chart's file: no error")
	}
}

// TestRecordedFigures: the charts in docs/figures are what benchplot draws from the
// figures beside them (BENCHMARKS.md's), so neither can change without the other.
func TestRecordedFigures(t *testing.T) {
	dir := filepath.Join("..", "..", "docs", "figures")
	out := t.TempDir()
	written, err := drawAll(dir, out)
	if err != nil {
		t.Fatal(err)
	}
	if len(written) != len(charts) {
		t.Errorf("drew %d charts from %s, want all %d", len(written), dir, len(charts))
	}
	for _, f := range written {
		want, err := os.ReadFile(filepath.Join(dir, filepath.Base(f)))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(f)
		if string(got) != string(want) {
			t.Errorf("%s is not what benchplot draws from its .tsv: go run ./test/benchplot -in docs/figures", filepath.Base(f))
		}
	}
}

// TestPerDevice: memory's MiB are drawn as bytes a device, with one zone size (bars)
// as with several (lines).
func TestPerDevice(t *testing.T) {
	dir := t.TempDir()
	for _, text := range []string{"devices\tresident\n2097152\t300\n", "devices\tresident\n2097152\t300\n4194304\t300\n"} {
		file := filepath.Join(dir, "memory.tsv")
		os.WriteFile(file, []byte(text), 0o644)
		tab, err := readTable(file)
		if err != nil {
			t.Fatal(err)
		}
		if err := charts["memory"].draw(tab, filepath.Join(dir, "memory.svg")); err != nil {
			t.Fatal(err)
		}
		if got := tab.values[0][0]; got != 150 {
			t.Errorf("%q: 300 MiB over 2,097,152 devices drawn as %v bytes a device, want 150", text, got)
		}
	}
}
