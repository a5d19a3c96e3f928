// Package config loads l4lb's TOML configuration file.
//
// Load (or Parse, for bytes already read) does everything once, in this order:
//
//  1. Decode. A TOML syntax error stops here and is reported with TOML's own
//     line and column.
//  2. Check the shape: every key must be one the schema knows (unknown keys
//     are errors, with a "did you mean" when one is close; TOML's
//     MetaData.Undecoded is the backstop), and every value must have the
//     right type. Durations are strings such as "250ms", "2s", "5m"; a bare
//     number or a negative duration is an error.
//  3. Defaults. Only keys absent from the file are defaulted, so an explicit
//     max_fails = 0 stays 0 and an explicit idle_timeout = "0s" is caught in
//     the next step instead of being quietly replaced.
//  4. Validate and resolve: enums, ranges, addresses, uniqueness of names and
//     host ids, references from listeners to upstreams. Host names in backend
//     addresses are resolved here, once (the first answer is used); listen
//     addresses must be IP literals.
//  5. Refuse what this version does not implement yet (see unsupported in
//     unsupported.go): such keys parse but are errors, never silently ignored.
//
// Every problem found is reported, not just the first: the error is an
// errors.Join of *Error values in file order, each naming the file, the line
// (when it can be found; the locator in locate.go scans the source because
// the TOML library keeps key positions private) and the key path, e.g.
//
//	l4lb.toml:22: upstream.redis.pool[0].hosts[1].weight: must be 0..1000, got -1
//
// Errors lists them for a caller that wants the first one.
//
// The package does not watch files or reload: a reload is another Load whose
// result the caller swaps in whole, or drops if it failed. A *Config is never
// modified after Load returns it.
package config
