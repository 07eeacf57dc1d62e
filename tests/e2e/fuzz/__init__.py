"""The parts of the fuzzed decoding test (tests/e2e/test_fuzz_decoding.py): the oracle written
from the contract (`oracle`), the values drawn (`strategies`), the records made of them
(`records`), and one `observer run` over them (`harness`)."""
