# Helpers shared by every folder.

# Warnings for our own code (not for generated code).
function(knockout_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers)
endfunction()

# knockout_add_test(NAME name SOURCES a_test.cc ... LIBS lib ... [PROPERTIES prop value ...])
# One GoogleTest binary, its tests discovered into ctest individually.
function(knockout_add_test)
  cmake_parse_arguments(ARG "" "NAME" "SOURCES;LIBS;PROPERTIES" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SOURCES})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_LIBS} GTest::gtest GTest::gtest_main)
  knockout_warnings(${ARG_NAME})
  gtest_discover_tests(${ARG_NAME}
    DISCOVERY_TIMEOUT 60
    NO_PRETTY_VALUES
    PROPERTIES ${ARG_PROPERTIES})
endfunction()
