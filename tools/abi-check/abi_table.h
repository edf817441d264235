/* One row per compared property; both tables are built from abi_rows.def. */
#ifndef ABI_TABLE_H
#define ABI_TABLE_H
#include <stddef.h>
struct abi_row {
    const char *what;  /* e.g. "offsetof(xen_pci_op.err)" */
    long long value;
    const char *text;  /* string constants only */
};


#endif
