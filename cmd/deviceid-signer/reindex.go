package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/deviceid/deviceid/signer/registry"
)

const reindexAbout = `Makes the tenant index agree with the device records, on etcd directly as the
operator: records put into etcd by other means than the signer (a provisioning
system's raw puts) join their tenant's lists, and entries of devices that are gone
or moved leave them. Each fix is audited (index.repair) and is safe beside running
signers. Prints what it found as JSON; -dry-run changes nothing.`

func reindexCommand(args []string) error {
	fs := command("reindex", "[-dry-run] [flags]", reindexAbout, "deviceid-signer reindex -zone iot.example -dry-run")
	var f etcdFlags
	f.register(fs)
	dryRun := fs.Bool("dry-run", false, "report what is wrong, fix nothing")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	settings, err := f.settings()
	if err != nil {
		return err
	}
	ctx := context.Background()
	reg := &registry.Registry{Prefix: f.prefix, Zone: f.zone}
	if reg.Client, err = settings.Connect(ctx, 10*time.Second, reg.ZonePrefix()); err != nil {
		return err
	}
	defer reg.Client.Close()
	rep, err := reg.Reindex(ctx, registry.OperatorActor("cli:"+currentUser()), *dryRun)
	if err != nil {
		return err
	}
	out, _ := json.Marshal(rep)
	fmt.Printf("%s\n", out)
	verb := "fixed"
	if *dryRun {
		verb = "to fix"
	}
	fmt.Fprintf(os.Stderr, "%d devices read; %d entries added, %d removed (%s)\n", rep.Devices, len(rep.Added), len(rep.Removed), verb)
	if len(rep.Changed) > 0 {
		return errors.New("some devices changed while they were fixed: run reindex again")
	}
	return nil
}
