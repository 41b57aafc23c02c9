"""The enforcing edge gateway (`devid gateway`): an mTLS-terminating TCP proxy in front of an MQTT
broker that admits only devices whose certificate passes the credential check and whose signed
revocation status is good, and cuts live sessions whose status turns bad. It never reads the store:
everything it knows comes from the CA bundle and signed status data (OCSP, filter, allowlist)."""
