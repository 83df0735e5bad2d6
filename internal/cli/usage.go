package cli

import (
	"flag"
	"fmt"
)

// SetUsage makes fs's -h text the commands' one form: the usage line, what the command
// does, an example, then every flag with its default.
func SetUsage(fs *flag.FlagSet, line, about, example string) {
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: %s\n\n%s\n\nexample:\n  %s\n\nflags:\n", line, about, example)
		fs.PrintDefaults()
	}
}
