// Package pkcs11key opens and makes keys in a hardware security module through
// PKCS#11 (github.com/ThalesGroup/crypto11), named by RFC 7512 pkcs11: URIs. It is the
// one place where the signer (its CA key) and the CoreDNS plugin (DNSSEC keys) reach
// an HSM.
//
// A URI names the token (token=, serial= or slot-id=) and the key (object= for its
// label, id= for its CKA_ID); its query names the module (module-path=) and the PIN
// (pin-source= a file holding it, or pin-value=). Without module-path the module is
// $DEVICEID_PKCS11_MODULE; without a PIN attribute the PIN is read from the file
// $DEVICEID_PKCS11_PIN_FILE. A PIN never has to be written on a command line.
package pkcs11key

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
	"github.com/stefanberger/go-pkcs11uri"
)

// now is the clock of the reopening; tests replace it.
var now = time.Now

// Scheme starts every PKCS#11 URI.
const Scheme = "pkcs11:"

// IsURI reports whether s is meant as a PKCS#11 URI rather than a file name.
func IsURI(s string) bool { return strings.HasPrefix(s, Scheme) }

// Environment variables used when a URI names no module or PIN.
const (
	ModuleEnv  = "DEVICEID_PKCS11_MODULE"
	PINFileEnv = "DEVICEID_PKCS11_PIN_FILE"
)

// Key is an ECDSA private key in a token. It signs with the token, and when a
// signature fails (the token went away) it opens the token again, at most once a
// second, so that signing recovers when the token is back.
type Key struct {
	spec spec
	pub  *ecdsa.PublicKey

	mu       sync.Mutex
	ctx      *crypto11.Context
	signer   crypto.Signer
	reopened time.Time
}

// spec is a parsed URI: what crypto11 needs to open the token and find the key.
type spec struct {
	uri    string
	config crypto11.Config
	label  []byte // CKA_LABEL (object=)
	id     []byte // CKA_ID (id=)
}

// parse reads an RFC 7512 URI and resolves its module and PIN.
func parse(uri string) (spec, error) {
	s := spec{uri: uri}
	u := pkcs11uri.New()
	if err := u.Parse(uri); err != nil {
		return s, fmt.Errorf("PKCS#11 URI %q: %v", redact(uri), err)
	}
	u.SetAllowAnyModule(true) // the operator names the module; no policy list to keep
	module := os.Getenv(ModuleEnv)
	if m, ok := u.GetQueryAttribute("module-path", false); ok {
		if info, err := os.Stat(m); err != nil || !info.Mode().IsRegular() {
			return s, fmt.Errorf("PKCS#11 URI %q: module-path %q is not a readable module", redact(uri), m)
		}
		module = m
	} else if module == "" {
		return s, fmt.Errorf("PKCS#11 URI %q names no module: add ?module-path=/path/to/module.so or set $%s", redact(uri), ModuleEnv)
	} else if _, err := os.Stat(module); err != nil {
		return s, fmt.Errorf("PKCS#11 module %s (from $%s): %v", module, ModuleEnv, err)
	}
	s.config.Path = module
	switch {
	case u.HasPIN():
		pin, err := u.GetPIN()
		if err != nil {
			return s, fmt.Errorf("PKCS#11 URI %q: %v", redact(uri), err)
		}
		s.config.Pin = strings.TrimRight(pin, "\r\n")
	case os.Getenv(PINFileEnv) != "":
		b, err := os.ReadFile(os.Getenv(PINFileEnv))
		if err != nil {
			return s, fmt.Errorf("the PIN file of $%s: %v", PINFileEnv, err)
		}
		s.config.Pin = strings.TrimRight(string(b), "\r\n")
	default:
		return s, fmt.Errorf("PKCS#11 URI %q has no PIN: add ?pin-source=/path/to/pin-file or set $%s", redact(uri), PINFileEnv)
	}
	token, hasToken := u.GetPathAttribute("token", false)
	serial, hasSerial := u.GetPathAttribute("serial", false)
	slot, hasSlot := u.GetPathAttribute("slot-id", false)
	switch {
	case hasToken && !hasSerial && !hasSlot:
		s.config.TokenLabel = token
	case hasSerial && !hasToken && !hasSlot:
		s.config.TokenSerial = serial
	case hasSlot && !hasToken && !hasSerial:
		n, _ := strconv.Atoi(slot) // Validate checked it is a number
		s.config.SlotNumber = &n
	default:
		return s, fmt.Errorf("PKCS#11 URI %q must name its token by exactly one of token=, serial= and slot-id=", redact(uri))
	}
	if t, ok := u.GetPathAttribute("type", false); ok && t != "private" {
		return s, fmt.Errorf("PKCS#11 URI %q names a %s object; a signing key is type=private", redact(uri), t)
	}
	if l, ok := u.GetPathAttribute("object", false); ok {
		s.label = []byte(l)
	}
	if id, ok := u.GetPathAttribute("id", false); ok {
		s.id = []byte(id)
	}
	if s.label == nil && s.id == nil {
		return s, fmt.Errorf("PKCS#11 URI %q names no key: add object=<label> or id=<id>", redact(uri))
	}
	s.config.PoolWaitTimeout = 10 * time.Second
	return s, nil
}

// redact drops a pin-value from a URI that goes into a message.
func redact(uri string) string {
	path, query, ok := strings.Cut(uri, "?")
	if !ok {
		return uri
	}
	var kept []string
	for _, a := range strings.Split(query, "&") {
		if strings.HasPrefix(a, "pin-value=") {
			a = "pin-value=REDACTED"
		}
		kept = append(kept, a)
	}
	return path + "?" + strings.Join(kept, "&")
}

// open logs in to the token and finds the key pair.
// logins counts the open contexts of each token with the PIN they logged in with.
// Login state belongs to the process: while a context of a token is open, another's
// login is not checked by the token (it answers "already logged in"), so a reload with
// a wrong PIN would pass and fail only at the next start. A new PIN is compared with
// the one in use instead.
var (
	loginsMu sync.Mutex
	logins   = map[string]*login{}
)

type login struct {
	pin  string
	open int
}

// token names the token of s as its URI does.
func (s spec) token() string {
	return fmt.Sprintf("%s\x00%s\x00%s\x00%v", s.config.Path, s.config.TokenLabel, s.config.TokenSerial, s.config.SlotNumber)
}

// configure logs in to the token of s.
func (s spec) configure() (*crypto11.Context, error) {
	loginsMu.Lock()
	defer loginsMu.Unlock()
	l := logins[s.token()]
	if l != nil && l.open > 0 && l.pin != s.config.Pin {
		return nil, errors.New("the PIN differs from the one this process is logged in to the token with, which the token cannot check while that login lasts: " +
			"use the PIN in use, or restart to change it")
	}
	cfg := s.config
	ctx, err := crypto11.Configure(&cfg)
	if err != nil {
		return nil, err
	}
	if l == nil {
		l = &login{}
		logins[s.token()] = l
	}
	l.pin = s.config.Pin
	l.open++
	return ctx, nil
}

// logout closes a context configure opened.
func (s spec) logout(ctx *crypto11.Context) error {
	err := ctx.Close()
	loginsMu.Lock()
	if l := logins[s.token()]; l != nil && l.open > 0 {
		l.open--
	}
	loginsMu.Unlock()
	return err
}

func (s spec) open() (*crypto11.Context, crypto11.Signer, error) {
	ctx, err := s.configure()
	if err != nil {
		return nil, nil, fmt.Errorf("opening the PKCS#11 token of %q: %w", redact(s.uri), explain(err))
	}
	keys, err := ctx.FindKeyPairs(s.id, s.label)
	switch {
	case err == nil && len(keys) == 0:
		err = errors.New("the token holds no such key pair")
	case err == nil && len(keys) > 1:
		err = fmt.Errorf("the URI names %d key pairs; name one (object= and id=)", len(keys))
	}
	if err != nil {
		s.logout(ctx)
		return nil, nil, fmt.Errorf("PKCS#11 key %q: %w", redact(s.uri), explain(err))
	}
	return ctx, keys[0], nil
}

// explain adds what a PKCS#11 return value means for an operator.
func explain(err error) error {
	var e pkcs11.Error
	if errors.As(err, &e) {
		switch e {
		case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE:
			return fmt.Errorf("wrong PIN (%w)", err)
		case pkcs11.CKR_PIN_LOCKED:
			return fmt.Errorf("the PIN is locked (%w)", err)
		}
	}
	if strings.Contains(err.Error(), "could not find PKCS#11 token") {
		return fmt.Errorf("no such token (%w)", err)
	}
	return err
}

// Open finds the private key a URI names. It must be ECDSA on one of curves.
func Open(uri string, curves ...elliptic.Curve) (*Key, error) {
	s, err := parse(uri)
	if err != nil {
		return nil, err
	}
	ctx, signer, err := s.open()
	if err != nil {
		return nil, err
	}
	pub, ok := signer.Public().(*ecdsa.PublicKey)
	if !ok || !hasCurve(curves, pub.Curve) {
		s.logout(ctx)
		return nil, fmt.Errorf("PKCS#11 key %q is a %s key; want ECDSA on %s", redact(uri), describe(signer.Public()), curveNames(curves))
	}
	return &Key{spec: s, pub: pub, ctx: ctx, signer: signer}, nil
}

// Generate makes an ECDSA key pair on curve in the token a URI names, with the URI's
// object= as its label and id= as its id, and refuses to make a second key of the
// same name.
func Generate(uri string, curve elliptic.Curve) (*Key, error) {
	s, err := parse(uri)
	if err != nil {
		return nil, err
	}
	if s.label == nil {
		return nil, fmt.Errorf("PKCS#11 URI %q: give the new key a label with object=", redact(uri))
	}
	ctx, err := s.configure()
	if err != nil {
		return nil, fmt.Errorf("opening the PKCS#11 token of %q: %w", redact(uri), explain(err))
	}
	if keys, err := ctx.FindKeyPairs(s.id, s.label); err != nil || len(keys) > 0 {
		s.logout(ctx)
		if err != nil {
			return nil, fmt.Errorf("PKCS#11 key %q: %w", redact(uri), err)
		}
		return nil, fmt.Errorf("the token already holds a key %q; refusing to make another of that name", s.label)
	}
	id := s.id
	if id == nil {
		id = s.label
	}
	signer, err := ctx.GenerateECDSAKeyPairWithLabel(id, s.label, curve)
	if err != nil {
		s.logout(ctx)
		return nil, fmt.Errorf("making a key in the PKCS#11 token of %q: %w", redact(uri), err)
	}
	return &Key{spec: s, pub: signer.Public().(*ecdsa.PublicKey), ctx: ctx, signer: signer}, nil
}

// Public returns the key's public half.
func (k *Key) Public() crypto.PublicKey { return k.pub }

// Sign signs digest in the token; the signature is ASN.1 DER, as crypto/ecdsa's.
func (k *Key) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	k.mu.Lock()
	signer := k.signer
	k.mu.Unlock()
	if signer != nil {
		sig, err := signer.Sign(rand, digest, opts)
		if err == nil {
			return sig, nil
		}
		if !k.reopen() {
			return nil, fmt.Errorf("PKCS#11 key %q: %w", redact(k.spec.uri), err)
		}
	} else if !k.reopen() {
		return nil, fmt.Errorf("PKCS#11 key %q: the token is not available", redact(k.spec.uri))
	}
	k.mu.Lock()
	signer = k.signer
	k.mu.Unlock()
	return signer.Sign(rand, digest, opts)
}

// reopen opens the token again after a failure, at most once a second, and reports
// whether the same key is there.
func (k *Key) reopen() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if now().Sub(k.reopened) < time.Second {
		return false
	}
	k.reopened = now()
	if k.ctx != nil {
		k.spec.logout(k.ctx)
		k.ctx, k.signer = nil, nil
	}
	ctx, signer, err := k.spec.open()
	if err != nil {
		return false
	}
	if !k.pub.Equal(signer.Public()) {
		k.spec.logout(ctx)
		return false
	}
	k.ctx, k.signer = ctx, signer
	return true
}

// Close logs out of the token.
func (k *Key) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.ctx == nil {
		return nil
	}
	err := k.spec.logout(k.ctx)
	k.ctx, k.signer = nil, nil
	return err
}

func hasCurve(curves []elliptic.Curve, c elliptic.Curve) bool {
	for _, x := range curves {
		if x == c {
			return true
		}
	}
	return false
}

func curveNames(curves []elliptic.Curve) string {
	var names []string
	for _, c := range curves {
		names = append(names, c.Params().Name)
	}
	return strings.Join(names, " or ")
}

func describe(pub crypto.PublicKey) string {
	if ec, ok := pub.(*ecdsa.PublicKey); ok {
		return "ECDSA " + ec.Curve.Params().Name
	}
	return fmt.Sprintf("%T", pub)
}

// A key record in etcd names its key in a token by path attributes only; the module
// and the PIN come from the token URI of the reader's own configuration, so that
// whoever writes records cannot name a module to load or a file to read as a PIN.
var refAttributes = map[string]bool{"token": true, "serial": true, "slot-id": true, "object": true, "id": true, "type": true}

// CheckToken checks a URI that names a token, its module and its PIN, and no key.
func CheckToken(tokenURI string) error {
	path, query, _ := strings.Cut(tokenURI, "?")
	if err := pkcs11uri.New().Parse(path); err != nil {
		return fmt.Errorf("PKCS#11 token URI %q: %v", redact(tokenURI), err)
	}
	for _, a := range strings.Split(strings.TrimPrefix(path, Scheme), ";") {
		if name, _, _ := strings.Cut(a, "="); name == "object" || name == "id" {
			return fmt.Errorf("PKCS#11 token URI %q names a key (%s=); it names the token only", redact(tokenURI), name)
		}
	}
	probe := path + ";object=probe"
	if query != "" {
		probe += "?" + query
	}
	_, err := parse(probe)
	return err
}

// ObjectRef is how a record names the key labelled object in the token of tokenURI:
// the token's token=, serial= or slot-id= and object=, nothing else.
func ObjectRef(tokenURI, object string) (string, error) {
	if err := CheckToken(tokenURI); err != nil {
		return "", err
	}
	if object == "" {
		return "", errors.New("a key in a token needs a label")
	}
	u := pkcs11uri.New()
	path, _, _ := strings.Cut(tokenURI, "?")
	u.Parse(path) // CheckToken parsed it
	for _, a := range []string{"token", "serial", "slot-id"} {
		if v, ok := u.GetPathAttribute(a, true); ok {
			return Scheme + a + "=" + v + ";object=" + url.PathEscape(object), nil
		}
	}
	return "", fmt.Errorf("PKCS#11 token URI %q names no token (token=, serial= or slot-id=)", redact(tokenURI))
}

// Label is the object= label a URI names ("" when none or not a URI).
func Label(uri string) string {
	u := pkcs11uri.New()
	if u.Parse(uri) != nil {
		return ""
	}
	l, _ := u.GetPathAttribute("object", false)
	return l
}

// Delete removes the key pair from its token, and closes it.
func (k *Key) Delete() error {
	k.mu.Lock()
	s, ok := k.signer.(crypto11.Signer)
	k.mu.Unlock()
	if !ok {
		return errors.New("the key is closed")
	}
	err := s.Delete()
	k.Close()
	return err
}

// InToken returns the URI that opens the key ref names, in the token of tokenURI (a
// URI with the module and the PIN, and no key): ref must name that token and its key
// by path attributes only.
func InToken(tokenURI, ref string) (string, error) {
	if strings.Contains(ref, "?") {
		return "", fmt.Errorf("%q names a module or a PIN; a key record names its token and key only (token=, object=)", redact(ref))
	}
	r := pkcs11uri.New()
	if err := r.Parse(ref); err != nil {
		return "", fmt.Errorf("PKCS#11 URI %q: %v", ref, err)
	}
	for _, a := range strings.Split(strings.TrimPrefix(ref, Scheme), ";") {
		if name, _, _ := strings.Cut(a, "="); !refAttributes[name] {
			return "", fmt.Errorf("%q: a key record names its token and key by token=, serial=, slot-id=, object= and id= only, not %s=", ref, name)
		}
	}
	u := pkcs11uri.New()
	if err := u.Parse(tokenURI); err != nil {
		return "", fmt.Errorf("PKCS#11 token URI %q: %v", redact(tokenURI), err)
	}
	matched := false
	for _, a := range []string{"token", "serial", "slot-id"} {
		want, ok := u.GetPathAttribute(a, false)
		if !ok {
			continue
		}
		matched = true
		if got, _ := r.GetPathAttribute(a, false); got != want {
			return "", fmt.Errorf("%q is not in the token %s=%s this replica opens", ref, a, want)
		}
	}
	if !matched {
		return "", fmt.Errorf("PKCS#11 token URI %q names no token (token=, serial= or slot-id=)", redact(tokenURI))
	}
	named := false
	for _, a := range []string{"object", "id"} {
		if _, ok := u.GetPathAttribute(a, false); ok {
			return "", fmt.Errorf("PKCS#11 token URI %q names a key (%s=); it names the token only", redact(tokenURI), a)
		}
		if v, ok := r.GetPathAttribute(a, false); ok {
			if v == "" {
				return "", fmt.Errorf("%q: an empty %s= names no key", ref, a)
			}
			u.SetPathAttributeUnencoded(a, []byte(v))
			named = true
		}
	}
	if !named {
		return "", fmt.Errorf("%q names no key (object= or id=)", ref)
	}
	return u.Format()
}
