from flows.env import set_defaults

set_defaults()
