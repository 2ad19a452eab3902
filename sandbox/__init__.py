"""A stateful stand-in for the NHS e-Referral Service (e-RS) FHIR STU3 API, referrer flow.

`sandbox.app.create_app` builds the aiohttp application; `python -m sandbox` serves it and
`sandbox.testing.running_sandbox` runs it in a background thread for tests.
"""
