// qcustomplot.h is written with Qt's keyword macros (signals, slots, emit, foreach), which this
// build switches off (QT_NO_KEYWORDS: Qt's `slots` breaks libtorch headers). Map them for this
// header only. Include it from ui sources, never from a file that also includes torch.
#pragma once

#define signals Q_SIGNALS
#define slots Q_SLOTS
#define emit Q_EMIT
#define foreach Q_FOREACH
#include <qcustomplot.h>
#undef signals
#undef slots
#undef emit
#undef foreach
