package record

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"unicode/utf8"
)

// Limits on a device's attributes: they are the registry's notes (model, serial,
// firmware, labels), not data, and ride in every read of the record.
const (
	MaxAttributes     = 32
	MaxAttributeKey   = 64
	MaxAttributeValue = 256
)

// CheckTenant checks a tenant name: one label of 1 to 63 characters of a-z, 0-9 and
// '-', not starting or ending with '-' (it appears in etcd keys and URLs).
func CheckTenant(name string) error {
	if err := checkLabel(name); err != nil {
		return fmt.Errorf("tenant name %q: %w", name, err)
	}
	return nil
}

// CheckAttributes checks a device's attributes: at most MaxAttributes; keys of 1 to
// MaxAttributeKey characters of a-z, 0-9, '.', '_' and '-' starting with a letter or
// digit; values of valid UTF-8 up to MaxAttributeValue bytes without control characters.
func CheckAttributes(attrs map[string]string) error {
	if len(attrs) > MaxAttributes {
		return fmt.Errorf("%d attributes, more than the limit of %d", len(attrs), MaxAttributes)
	}
	for k, v := range attrs {
		if err := CheckAttributeKey(k); err != nil {
			return err
		}
		if len(v) > MaxAttributeValue {
			return fmt.Errorf("attribute %q: value of %d bytes, more than the limit of %d", k, len(v), MaxAttributeValue)
		}
		if !utf8.ValidString(v) {
			return fmt.Errorf("attribute %q: value is not valid UTF-8", k)
		}
		if strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return fmt.Errorf("attribute %q: value has a control character", k)
		}
	}
	return nil
}

// CheckAttributeKey checks one attribute key.
func CheckAttributeKey(k string) error {
	if k == "" || len(k) > MaxAttributeKey {
		return fmt.Errorf("attribute key %q: want 1 to %d characters", k, MaxAttributeKey)
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || i > 0 && (c == '.' || c == '_' || c == '-')
		if !ok {
			return fmt.Errorf("attribute key %q: only a-z, 0-9, '.', '_' and '-' (not first) are allowed", k)
		}
	}
	return nil
}

// Clone returns a deep copy of d.
func (d *Device) Clone() *Device {
	c := *d
	c.Attributes = maps.Clone(d.Attributes)
	c.Credentials = slices.Clone(d.Credentials)
	return &c
}
