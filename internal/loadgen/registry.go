package loadgen

import (
	"context"
	"errors"

	"amqphub/internal/registry"
)

// StoreRegistry creates bench devices directly in a hub's registry store
// (an in-process hub).
func StoreRegistry(s registry.Store) DeviceRegistry { return storeRegistry{s} }

type storeRegistry struct{ s registry.Store }

func (r storeRegistry) EnsureDevice(ctx context.Context, id, key string) (string, error) {
	d := registry.Device{DeviceID: id, Status: registry.StatusEnabled}
	d.Authentication.Type = registry.AuthSAS
	d.Authentication.SymmetricKey = registry.SymmetricKey{PrimaryKey: key, SecondaryKey: key}
	got, err := r.s.CreateDevice(ctx, d)
	if errors.Is(err, registry.ErrDeviceAlreadyExists) {
		got, err = r.s.GetDevice(ctx, id)
	}
	if err != nil {
		return "", err
	}
	return got.Authentication.SymmetricKey.PrimaryKey, nil
}
