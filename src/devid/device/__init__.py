"""The device agent: IDevID -> LDevID -> renew -> fallback, persisted atomically, time injected."""
