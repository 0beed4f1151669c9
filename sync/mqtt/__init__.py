"""MQTT output of the agent: JSON alerts or a Sparkplug B edge node, as a buffer sink."""
