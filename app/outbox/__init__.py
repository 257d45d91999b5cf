"""The transactional outbox: what a change sets in motion is written as rows in the change's own
transaction (`change.py`) and carried out from there by the relay (`relay.py`)."""
