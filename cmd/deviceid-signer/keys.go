package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/deviceid/deviceid/internal/cli"
	"github.com/deviceid/deviceid/internal/kek"
	"github.com/deviceid/deviceid/internal/pkcs11key"
	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/keymgr"
	"github.com/deviceid/deviceid/signer/registry"

	"github.com/miekg/dns"
)

const keysAbout = `Hands-free DNSSEC keys: the zone's keys and their timeline in etcd, which every
CoreDNS replica with "keys etcd" follows, rolled by the key manager of a signer started
with -keys. On etcd directly, as the operator:

  keys kek -out FILE        make the key-encryption key every replica and signer holds
  keys enable [policy]      manage the zone's keys (or change its policy and parents)
  keys import KFILE...      take over a running zone's BIND key files (wrapped under -kek)
  keys list [-json]         the keys, their timeline, and what the manager waits for
  keys roll -role R         start a rollover of the zsk, ksk or csk now (a compromised key)
  keys pause | resume       hold the manager where it is, or let it go on`

// keysSubcommands are keys' subcommands, in keysAbout's order.
var keysSubcommands = []string{"kek", "enable", "import", "list", "roll", "pause", "resume"}

func keysCommand(args []string) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintln(os.Stderr, keysAbout)
		return flag.ErrHelp
	}
	sub, args := args[0], args[1:]
	if !slices.Contains(keysSubcommands, sub) {
		return fmt.Errorf("unknown keys command %q%s (want %s)", sub, cli.Hint(sub, keysSubcommands), strings.Join(keysSubcommands, ", "))
	}
	fs := command("keys "+sub, "[flags]", keysAbout, "deviceid-signer keys list -zone iot.example")
	var f etcdFlags
	if sub != "kek" {
		f.register(fs)
	}
	kekFile := fs.String("kek", env("DEVICEID_KEK", ""), "the key-encryption key file ($DEVICEID_KEK)")
	hsm := fs.String("hsm", env("DEVICEID_KEYS_HSM", ""), "make new keys in this HSM token instead: a pkcs11: URI with module-path and pin-source, the token of the replicas' hsm line ($DEVICEID_KEYS_HSM)")
	out := fs.String("out", "", "keys kek: the file to write")
	role := fs.String("role", "", "keys roll: zsk, ksk or csk")
	asJSON := fs.Bool("json", false, "keys list: JSON")
	p := keymgr.DefaultPolicy
	alg := fs.Int("algorithm", int(p.Algorithm), "keys enable: 13 (ECDSAP256SHA256) or 15 (ED25519)")
	csk := fs.Bool("csk", false, "keys enable: one key signs everything")
	zskLife := fs.Duration("zsk-lifetime", p.ZSKLifetime.D(), "keys enable: how long a ZSK signs (0: until rolled by hand)")
	kskLife := fs.Duration("ksk-lifetime", p.KSKLifetime.D(), "keys enable: how long a KSK signs (0: until rolled by hand)")
	dnskeyTTL := fs.Duration("dnskey-ttl", p.DNSKEYTTL.D(), "keys enable: the zone's TTL (the plugin's ttl)")
	maxTTL := fs.Duration("zone-max-ttl", p.ZoneMaxTTL.D(), "keys enable: the largest TTL in the zone")
	dsTTL := fs.Duration("ds-ttl", p.DSTTL.D(), "keys enable: the TTL of the zone's DS at the parent")
	propagation := fs.Duration("propagation", p.Propagation.D(), "keys enable: how long a change takes to reach every replica")
	parents := fs.String("parent", "", "keys enable: the parent zone's servers asked for the DS, host:port separated by commas")
	since := fs.Duration("published-for", 24*time.Hour, "keys import: how long the zone has published the imported keys already")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if sub == "kek" {
		if *out == "" {
			return errors.New("-out is required")
		}
		k, err := kek.Generate(*out)
		if err != nil {
			return err
		}
		fmt.Printf("key-encryption key %s written to %s (mode 600): copy it to every CoreDNS replica (kek file) and signer (-kek)\n", k.ID, *out)
		return nil
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
	actor := registry.OperatorActor("cli:" + currentUser())
	var k *kek.KEK
	if *kekFile != "" {
		if k, err = kek.Load(*kekFile); err != nil {
			return err
		}
	}
	if *hsm != "" {
		if err := pkcs11key.CheckToken(*hsm); err != nil {
			return fmt.Errorf("-hsm: %v", err)
		}
	}
	m := &keymgr.Manager{Registry: reg, KEK: k, HSM: *hsm, Actor: actor}
	switch sub {
	case "enable":
		s, rev, err := keymgr.LoadSettings(ctx, reg)
		if err != nil && !errors.Is(err, keymgr.ErrNotManaged) {
			return err
		}
		s.Policy = keymgr.Policy{Algorithm: uint8(*alg), CSK: *csk, ZSKLifetime: keymgr.Duration(*zskLife), KSKLifetime: keymgr.Duration(*kskLife),
			DNSKEYTTL: keymgr.Duration(*dnskeyTTL), ZoneMaxTTL: keymgr.Duration(*maxTTL), DSTTL: keymgr.Duration(*dsTTL), Propagation: keymgr.Duration(*propagation)}
		if *csk {
			s.Policy.ZSKLifetime = 0
		}
		if *parents != "" {
			s.ParentServers = strings.Split(*parents, ",")
		}
		if err := s.Policy.Validate(); err != nil {
			return fmt.Errorf("policy: %v", err)
		}
		b, _ := json.Marshal(s)
		if err := reg.PutKeySettings(ctx, actor, rev, b, "enable: "+string(b)); err != nil {
			return err
		}
		fmt.Printf("the keys of %s are managed: %s\n", reg.Zone, b)
		return nil
	case "pause", "resume":
		s, rev, err := keymgr.LoadSettings(ctx, reg)
		if err != nil {
			return err
		}
		s.Paused = sub == "pause"
		b, _ := json.Marshal(s)
		if err := reg.PutKeySettings(ctx, actor, rev, b, sub); err != nil {
			return err
		}
		if s.Paused {
			fmt.Printf("the key manager of %s is paused: no key is made, published or removed until 'keys resume'\n", reg.Zone)
		} else {
			fmt.Printf("the key manager of %s resumed\n", reg.Zone)
		}
		return nil
	case "roll":
		rep, err := m.Step(ctx, &keymgr.Request{Roll: *role}, nil)
		if err != nil {
			return err
		}
		for _, st := range rep.Steps {
			fmt.Printf("%s: %s\n", st.ID, st.Why)
		}
		return nil
	case "list":
		return listKeys(ctx, m, *asJSON)
	case "import":
		if k == nil {
			return errors.New("-kek is required: the imported private keys are stored wrapped under it")
		}
		return importKeys(ctx, reg, actor, k, fs.Args(), *since)
	}
	return fmt.Errorf("keys %s: not handled", sub) // keysSubcommands names one the switch lacks
}

// listKeys prints the keys with their timeline, and what the manager waits for.
func listKeys(ctx context.Context, m *keymgr.Manager, asJSON bool) error {
	keys, err := m.Registry.ZoneKeys(ctx)
	if err != nil {
		return err
	}
	s, _, serr := keymgr.LoadSettings(ctx, m.Registry)
	if asJSON {
		type line struct {
			ID  string          `json:"id"`
			Key *record.ZoneKey `json:"key,omitempty"`
			Err string          `json:"error,omitempty"`
		}
		var out []line
		for _, k := range keys {
			l := line{ID: k.ID, Key: k.Key}
			if k.Err != nil {
				l.Err = k.Err.Error()
			}
			out = append(out, l)
		}
		return json.NewEncoder(os.Stdout).Encode(out)
	}
	now := time.Now()
	w := tabwriter.NewWriter(os.Stdout, 0, 2, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tROLE\tTAG\tNOW\tPUBLISH\tACTIVE\tRETIRE\tREMOVE\tCDS FROM\tCDS UNTIL\tDS SEEN")
	for _, k := range keys {
		if k.Err != nil {
			fmt.Fprintf(w, "%s\tinvalid: %v\n", k.ID, k.Err)
			continue
		}
		var tag uint16
		if dk, err := k.Key.PublicKey(m.Registry.Zone); err == nil {
			tag = dk.KeyTag()
		}
		var state []string
		if k.Key.Published(now) {
			state = append(state, "published")
		}
		if k.Key.Signs(now, s.Policy.DNSKEYTTL.D()) {
			state = append(state, "signs")
		}
		if k.Key.Syncs(now) {
			state = append(state, "cds")
		}
		tl := k.Key.Timeline
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, k.Key.Role, tag, strings.Join(state, ","),
			when(tl.Publish), when(tl.Active), when(tl.Retire), when(tl.Remove), when(tl.SyncPublish), when(tl.SyncDelete), when(tl.DSSeen))
	}
	w.Flush()
	switch {
	case serr != nil:
		fmt.Println(serr)
	case s.Paused:
		fmt.Println("the key manager is paused (deviceid-signer keys resume)")
	}
	return nil
}

func when(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format("2006-01-02T15:04:05Z")
}

// importKeys takes over BIND key files (K<zone>.+<alg>+<tag>): each becomes a key
// record with its private key wrapped under k, published and signing since
// publishedFor ago (the zone serves them already); a SEP key's CDS with it.
func importKeys(ctx context.Context, reg *registry.Registry, actor registry.Actor, k *kek.KEK, files []string, publishedFor time.Duration) error {
	if len(files) == 0 {
		return errors.New("name the key files (K<zone>.+<alg>+<tag>, .key or .private)")
	}
	type loaded struct {
		id  string
		dk  *dns.DNSKEY
		der []byte
	}
	var keys []loaded
	seps := 0
	for _, f := range files {
		base := strings.TrimSuffix(strings.TrimSuffix(f, ".key"), ".private")
		pub, err := os.ReadFile(base + ".key")
		if err != nil {
			return err
		}
		var dk *dns.DNSKEY
		zp := dns.NewZoneParser(strings.NewReader(string(pub)), "", base+".key")
		for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
			if d, isKey := rr.(*dns.DNSKEY); isKey {
				dk = d
			}
		}
		if dk == nil {
			return fmt.Errorf("%s.key: no DNSKEY record (%v)", base, zp.Err())
		}
		if !strings.EqualFold(dk.Hdr.Name, dns.Fqdn(record.Zone(reg.Zone))) {
			return fmt.Errorf("%s.key is for %s, not %s", base, dk.Hdr.Name, reg.Zone)
		}
		pf, err := os.Open(base + ".private")
		if err != nil {
			return err
		}
		priv, err := dk.ReadPrivateKey(pf, base+".private")
		pf.Close()
		if err != nil {
			return fmt.Errorf("%s.private: %v", base, err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(priv)
		if err != nil {
			return fmt.Errorf("%s.private: %v", base, err)
		}
		if dk.Flags&dns.SEP != 0 {
			seps++
		}
		keys = append(keys, loaded{id: fmt.Sprintf("imported-%d-%d", dk.Algorithm, dk.KeyTag()), dk: dk, der: der})
	}
	since := time.Now().Add(-publishedFor).UTC().Truncate(time.Second)
	for _, l := range keys {
		role := record.RoleZSK
		switch {
		case l.dk.Flags&dns.SEP != 0 && seps == len(keys):
			role = record.RoleCSK
		case l.dk.Flags&dns.SEP != 0:
			role = record.RoleKSK
		}
		_, rdata, _ := strings.Cut(l.dk.String(), "DNSKEY\t")
		rec := &record.ZoneKey{Version: record.Version, Role: role, DNSKEY: rdata,
			Private:  record.PrivateKeyRef{Wrapped: k.Wrap(l.der, record.WrapBinding(reg.Zone, l.id)), KEK: k.ID},
			Timeline: record.Timeline{Created: since, Publish: &since, Active: &since}}
		if role != record.RoleZSK {
			rec.Timeline.SyncPublish = &since
		}
		if err := reg.WriteZoneKey(ctx, actor, nil, l.id, 0, rec, "key.import", "imported from "+l.id); err != nil {
			return fmt.Errorf("%s: %w", l.id, err)
		}
		fmt.Printf("%s: %s, tag %d, imported\n", l.id, role, l.dk.KeyTag())
	}
	return nil
}
