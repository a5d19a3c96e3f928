package config

import "fmt"

// unsupported lists what the config accepts syntactically but this version
// does not implement yet, so that nothing is accepted and silently ignored.
// A release that implements a feature deletes its line here.
func unsupported(c *Config) []error {
	var errs []error
	no := func(key string, v any) {
		msg := "not supported yet in this version"
		if v != nil {
			msg = fmt.Sprintf("%v: %s", v, msg)
		}
		errs = append(errs, &Error{Key: key, Msg: msg})
	}
	if c.Control.Store == "consul" {
		no("control.store", `"consul"`)
	}
	return errs
}
