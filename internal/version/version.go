// Package version says which build a deviceid binary is.
package version

import "runtime/debug"

// Version is set at build time (-ldflags "-X github.com/deviceid/deviceid/internal/version.Version=v1.2.3").
var Version = ""

// String is Version, or else the module version and VCS revision the binary was built from.
func String() string {
	if Version != "" {
		return Version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" {
			return bi.Main.Version + " " + s.Value
		}
	}
	return bi.Main.Version
}
