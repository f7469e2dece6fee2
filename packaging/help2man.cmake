# engram(1) from `engram --help`: run with -DPROGRAM=... -DVERSION=... -DOUT=... -P help2man.cmake.
# The page is the help text itself (options and their descriptions), so the two cannot drift.
set(ENV{QT_QPA_PLATFORM} offscreen)
execute_process(COMMAND ${PROGRAM} --help OUTPUT_VARIABLE help RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${PROGRAM} --help failed (${rc})")
endif()
# troff: backslashes and hyphens escaped, a leading dot or quote guarded.
string(REPLACE "\\" "\\e" help "${help}")
string(REPLACE "-" "\\-" help "${help}")
string(REGEX REPLACE "\n([.'])" "\n\\\\&\\1" help "${help}")
file(WRITE ${OUT} ".TH ENGRAM 1 \"\" \"engram ${VERSION}\" \"User Commands\"
.SH NAME
engram \\- a workbench for model editing: locate, edit, verify and undo what a transformer knows
.SH SYNOPSIS
.B engram
[\\fIoptions\\fR] [\\fIFILE.engram\\fR]
.SH DESCRIPTION
The Engram workbench. Without arguments it opens the built\\-in Fact World model; Help > Documentation
opens the documentation installed with it.
.SH OPTIONS
.nf
${help}.fi
.SH FILES
.TP
.I /usr/share/engram/demo
the built\\-in Fact World language model and Shapes World ViT
.TP
.I /usr/share/doc/engram
the documentation
.SH SEE ALSO
.BR engram\\-cli (1)
")
