// Package kek wraps the private halves of a zone's DNSSEC keys under a key-encryption
// key (KEK) that every CoreDNS replica and the signer's key manager hold, so that the
// keys can live in etcd, which every replica reads, without ever being there in the
// clear. A KEK is 32 random bytes; a wrapped key is sealed with AES-256-GCM and bound
// to what it belongs to (the zone and the key's id), so that it cannot be moved to
// another record.
package kek

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
)

// KEK is a key-encryption key.
type KEK struct {
	// ID names the KEK without revealing it: the first 8 hex digits of a hash of it,
	// stored beside every key it wraps, so that a replica holding another KEK says so.
	ID   string
	aead cipher.AEAD
}

// New makes the KEK of 32 bytes key.
func New(key []byte) (*KEK, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("a KEK is 32 bytes, not %d", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(append([]byte("deviceid kek id\x00"), key...))
	return &KEK{ID: hex.EncodeToString(sum[:4]), aead: aead}, nil
}

// Load reads a KEK file: the 32 bytes in base64 on one line. The file must be
// readable by its owner alone.
func Load(path string) (*KEK, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("kek: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("kek: %s is readable by others (mode %v); chmod 600 it", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("kek: %w", err)
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("kek: %s is not base64: %v", path, err)
	}
	k, err := New(key)
	if err != nil {
		return nil, fmt.Errorf("kek: %s: %w", path, err)
	}
	return k, nil
}

// Generate writes a new KEK file at path (mode 600); it never overwrites one.
func Generate(path string) (*KEK, error) {
	key := make([]byte, 32)
	rand.Read(key)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("kek: %w", err)
	}
	if _, err := fmt.Fprintln(f, base64.StdEncoding.EncodeToString(key)); err != nil {
		f.Close()
		return nil, fmt.Errorf("kek: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("kek: %w", err)
	}
	return New(key)
}

// Wrap seals plain for what it belongs to (the nonce first).
func (k *KEK) Wrap(plain []byte, belongsTo string) []byte {
	nonce := make([]byte, k.aead.NonceSize())
	rand.Read(nonce)
	return k.aead.Seal(nonce, nonce, plain, []byte(belongsTo))
}

// ErrWrongKEK: a key wrapped under another KEK, or bound to something else.
var ErrWrongKEK = errors.New("the wrapped key does not open with this KEK")

// Unwrap opens what Wrap sealed for belongsTo, wrapped under the KEK named kekID.
func (k *KEK) Unwrap(sealed []byte, kekID, belongsTo string) ([]byte, error) {
	if kekID != k.ID {
		return nil, fmt.Errorf("%w: it is wrapped under KEK %s, and this one is %s", ErrWrongKEK, kekID, k.ID)
	}
	n := k.aead.NonceSize()
	if len(sealed) < n+k.aead.Overhead() {
		return nil, fmt.Errorf("%w: %d bytes is too short", ErrWrongKEK, len(sealed))
	}
	plain, err := k.aead.Open(nil, sealed[:n], sealed[n:], []byte(belongsTo))
	if err != nil {
		return nil, fmt.Errorf("%w (altered, or bound to another key than %s)", ErrWrongKEK, belongsTo)
	}
	return plain, nil
}
