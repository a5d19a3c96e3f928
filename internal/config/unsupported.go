package config

// unsupported lists what the config accepts syntactically but this version
// does not implement yet, so that nothing is accepted and silently ignored.
// A release that implements a feature deletes its line here; there is none
// at the moment (control.store = "consul", fleet mode, was the last).
func unsupported(*Config) []error {
	return nil
}
