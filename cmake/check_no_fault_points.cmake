# ctest helper: BINARY (a normal build's process) must not contain the armable fault points
# (the KNOCKOUT_FAULTS variable they read), and TEST_BINARY (its -test variant) must.
# Usage: cmake -DBINARY=... -DTEST_BINARY=... -P check_no_fault_points.cmake
file(STRINGS "${BINARY}" hits REGEX "KNOCKOUT_FAULTS")
if(hits)
  message(FATAL_ERROR "${BINARY} has armable fault points (contains KNOCKOUT_FAULTS)")
endif()
file(STRINGS "${TEST_BINARY}" hits REGEX "KNOCKOUT_FAULTS")
if(NOT hits)
  message(FATAL_ERROR "${TEST_BINARY} has no armable fault points (no KNOCKOUT_FAULTS)")
endif()
message(STATUS "fault points: only in ${TEST_BINARY}")
