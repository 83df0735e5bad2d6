package keymgr

import (
	"testing"

	"github.com/deviceid/deviceid/internal/testenv"
)

// TestMain removes the SoftHSM2 token the tests made (testenv.Main).
func TestMain(m *testing.M) { testenv.Main(m) }
