// Package version says which build of kubenova is running.
package version

// Version is set at build time with -ldflags "-X github.com/kubenova/kubenova/internal/version.Version=...".
var Version = "dev"
