# Control socket (issue 18): a libFuzzer harness for the request decoder, run for a bounded time in `make test`.
CONTROL_FUZZ_SECONDS ?= 20
CONTROL_FUZZ_SOURCES = Sources/Farm/Control.swift Sources/Farm/ControlDecoder.swift Sources/Farm/FarmError.swift

TEST_STEPS += fuzz-control

.PHONY: fuzz-control

fuzz: fuzz-control

## fuzz-control: the control request decoder under libFuzzer + ASan for CONTROL_FUZZ_SECONDS (default 20 s; `make fuzz`
## runs it for FUZZ_SECONDS); lines up to 2 MB, so the size cap is crossed too. The committed corpus seeds it.
fuzz-control:
	@mkdir -p .build/fuzz/corpus-control
	$(SWIFTC) -sanitize=fuzzer,address -parse-as-library -O -module-name ControlFuzz \
		$(CONTROL_FUZZ_SOURCES) fuzz/FuzzControl.swift -o .build/fuzz/control
	@secs=$(if $(filter fuzz,$(MAKECMDGOALS)),$(FUZZ_SECONDS),$(CONTROL_FUZZ_SECONDS)); echo "fuzzing control for $$secs s"; \
	  SWIFT_BACKTRACE=enable=no .build/fuzz/control -max_total_time=$$secs -max_len=2200000 -len_control=200 \
	    -print_final_stats=1 -artifact_prefix=.build/fuzz/control- \
	    .build/fuzz/corpus-control fuzz/corpus/control 2>&1 | grep -E "^(#|stat::number_of_executed_units|==|SUMMARY|Done)" | tail -3; \
	  test $${PIPESTATUS[0]} -eq 0 || exit 1
