"""Speed switches: what a user asks for, what runs on a device, and applying it to a model."""
