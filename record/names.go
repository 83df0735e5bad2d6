package record

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// DeviceLabel is the label between a device name and the zone (draft-ietf-dance-client-auth format 2).
const DeviceLabel = "_device"

// CALabel is the label under DeviceLabel that holds CA discovery records.
const CALabel = "_ca"

// MaxNameLength is the longest owner name in presentation form without the trailing dot.
const MaxNameLength = 253

// DeviceName folds name to lower case and checks that it is a valid device name:
// one or more dot-separated labels of 1 to 63 characters of a-z, 0-9 and '-', not
// starting or ending with '-'.
func DeviceName(name string) (string, error) {
	name, err := lowerASCII(name)
	if err != nil {
		return "", fmt.Errorf("device name: %w", err)
	}
	if name == "" {
		return "", errors.New("device name is empty")
	}
	for label := range strings.SplitSeq(name, ".") {
		if err := checkLabel(label); err != nil {
			return "", fmt.Errorf("device name %q: %w", name, err)
		}
	}
	return name, nil
}

// lowerASCII folds A-Z to a-z and refuses any other byte outside ASCII first:
// strings.ToLower folds some non-ASCII letters to ASCII ones (the Kelvin sign U+212A to
// 'k'), which would make two different names a client gives one device.
func lowerASCII(name string) (string, error) {
	for i := 0; i < len(name); i++ {
		if name[i] >= 0x80 {
			return "", fmt.Errorf("%q has a character outside ASCII; only a-z, 0-9, '-' and '.' are allowed", name)
		}
	}
	return strings.ToLower(name), nil
}

func checkLabel(label string) error {
	switch {
	case label == "":
		return errors.New("empty label")
	case len(label) > 63:
		return fmt.Errorf("label %q is longer than 63 characters", label)
	case label[0] == '-' || label[len(label)-1] == '-':
		return fmt.Errorf("label %q starts or ends with '-'", label)
	}
	for i := 0; i < len(label); i++ {
		c := label[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("label %q has character %q; only a-z, 0-9 and '-' are allowed", label, c)
		}
	}
	return nil
}

// Zone returns zone in the canonical form used in owner names: lower case, fully qualified.
func Zone(zone string) string {
	zone = strings.ToLower(zone)
	if !strings.HasSuffix(zone, ".") {
		zone += "."
	}
	return zone
}

// DeviceOwner returns the owner name <device>._device.<zone> of a device, checking the
// device name and the length of the whole name.
func DeviceOwner(device, zone string) (string, error) {
	device, err := DeviceName(device)
	if err != nil {
		return "", err
	}
	owner := device + "." + DeviceLabel + "." + Zone(zone)
	if len(owner)-1 > MaxNameLength {
		return "", fmt.Errorf("device name %q makes an owner name of %d octets, more than %d", device, len(owner)-1, MaxNameLength)
	}
	return owner, nil
}

// CAOwner returns the owner name <aki>._ca._device.<zone> of a CA discovery record.
func CAOwner(aki, zone string) string {
	return aki + "." + CALabel + "." + DeviceLabel + "." + Zone(zone)
}

// CheckAKI checks that aki is a key identifier written as 40 lowercase hex digits.
func CheckAKI(aki string) error {
	if len(aki) != 40 || strings.ToLower(aki) != aki {
		return fmt.Errorf("key identifier %q is not 40 lowercase hex digits", aki)
	}
	if _, err := hex.DecodeString(aki); err != nil {
		return fmt.Errorf("key identifier %q is not 40 lowercase hex digits", aki)
	}
	return nil
}

// Key kinds under P/<zone>/.
const (
	KindDevice  = "device"
	KindCA      = "ca"
	KindService = "service"
)

// ZonePrefix returns the etcd prefix P/<zone>/ under which one zone's records live.
// The zone is written in lower case without the trailing dot.
func ZonePrefix(prefix, zone string) string {
	return strings.TrimSuffix(prefix, "/") + "/" + strings.TrimSuffix(Zone(zone), ".") + "/"
}

// DeviceKey returns the etcd key of a device record.
func DeviceKey(prefix, zone, device string) string {
	return ZonePrefix(prefix, zone) + KindDevice + "/" + device
}

// CAKey returns the etcd key of a CA record.
func CAKey(prefix, zone, aki string) string {
	return ZonePrefix(prefix, zone) + KindCA + "/" + aki
}

// ServiceKey returns the etcd key of a service record.
func ServiceKey(prefix, zone, service string) string {
	return ZonePrefix(prefix, zone) + KindService + "/" + service
}

// ServiceName folds name to lower case and checks that it names a service endpoint
// relative to the zone: _<port>._<tcp|udp>.<host>, port 1 to 65535 in decimal without
// leading zeros, host one or more labels as in a device name. The host's labels have no
// '_', so a service never collides with _device names.
func ServiceName(name string) (string, error) {
	name, err := lowerASCII(name)
	if err != nil {
		return "", fmt.Errorf("service name: %w", err)
	}
	port, rest, ok := strings.Cut(name, ".")
	proto, host, ok2 := strings.Cut(rest, ".")
	if !ok || !ok2 || !strings.HasPrefix(port, "_") || (proto != "_tcp" && proto != "_udp") {
		return "", fmt.Errorf("service name %q: want _<port>._tcp.<host> or _<port>._udp.<host>", name)
	}
	n, err := strconv.Atoi(port[1:])
	if err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port[1:] {
		return "", fmt.Errorf("service name %q: port %q is not a number from 1 to 65535", name, port[1:])
	}
	for label := range strings.SplitSeq(host, ".") {
		if err := checkLabel(label); err != nil {
			return "", fmt.Errorf("service name %q: host: %w", name, err)
		}
	}
	return name, nil
}

// ServiceHost returns the host labels of a checked service name: _8883._tcp.mqtt.acme → mqtt.acme.
func ServiceHost(name string) string {
	_, rest, _ := strings.Cut(name, ".")
	_, host, _ := strings.Cut(rest, ".")
	return host
}

// ServiceOwner returns the owner name <service>.<zone> of a service, checking the name
// and the length of the whole name.
func ServiceOwner(service, zone string) (string, error) {
	service, err := ServiceName(service)
	if err != nil {
		return "", err
	}
	owner := service + "." + Zone(zone)
	if len(owner)-1 > MaxNameLength {
		return "", fmt.Errorf("service name %q makes an owner name of %d octets, more than %d", service, len(owner)-1, MaxNameLength)
	}
	return owner, nil
}

// SplitKey splits the part of an etcd key after the zone prefix into its kind and name,
// and checks the name. Device names in keys must already be lower case: folding them
// would let two keys claim one name.
func SplitKey(rest string) (kind, name string, err error) {
	kind, name, ok := strings.Cut(rest, "/")
	if !ok {
		return "", "", fmt.Errorf("key %q is not <kind>/<name>", rest)
	}
	switch kind {
	case KindDevice:
		canonical, err := DeviceName(name)
		if err != nil {
			return "", "", err
		}
		if canonical != name {
			return "", "", fmt.Errorf("device name %q in an etcd key must be lower case (%q)", name, canonical)
		}
	case KindCA:
		if err := CheckAKI(name); err != nil {
			return "", "", err
		}
	case KindService:
		canonical, err := ServiceName(name)
		if err != nil {
			return "", "", err
		}
		if canonical != name {
			return "", "", fmt.Errorf("service name %q in an etcd key must be lower case (%q)", name, canonical)
		}
	case KindDNSSEC:
		id, ok := strings.CutPrefix(name, "key/")
		if !ok {
			return "", "", fmt.Errorf("key %q: want %s/key/<id>", rest, KindDNSSEC)
		}
		if err := CheckZoneKeyID(id); err != nil {
			return "", "", err
		}
		return kind, id, nil
	default:
		return "", "", fmt.Errorf("key %q: unknown kind %q (want %q, %q, %q or %q)", rest, kind, KindDevice, KindCA, KindService, KindDNSSEC)
	}
	return kind, name, nil
}
