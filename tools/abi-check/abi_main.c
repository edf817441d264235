/* abi-check: compare the system's Xen headers with ours, row by row. */
#include <stdio.h>
#include <string.h>
#include "abi_table.h"

const struct abi_row *abi_table_xen(size_t *n);
const struct abi_row *abi_table_ours(size_t *n);

int main(void)
{
    size_t nx, no;
    const struct abi_row *x = abi_table_xen(&nx), *o = abi_table_ours(&no);
    if (nx != no) {
        fprintf(stderr, "abi-check: FAIL: %zu rows from <xen/...> but %zu from Headers/CXenPCI/\n", nx, no);
        return 1;
    }
    size_t bad = 0;
    printf("%-40s %12s %12s  %s\n", "item", "xen", "ours", "result");
    for (size_t i = 0; i < nx; i++) {
        int same = strcmp(x[i].what, o[i].what) == 0 && x[i].value == o[i].value &&
                   (x[i].text == NULL) == (o[i].text == NULL) &&
                   (x[i].text == NULL || strcmp(x[i].text, o[i].text) == 0);
        if (x[i].text)
            printf("%-40s %12s %12s  %s\n", x[i].what, x[i].text, o[i].text ? o[i].text : "-",
                   same ? "ok" : "MISMATCH");
        else
            printf("%-40s %12lld %12lld  %s\n", x[i].what, x[i].value, o[i].value,
                   same ? "ok" : "MISMATCH");
        bad += !same;
    }
    if (bad) {
        fprintf(stderr, "abi-check: FAIL: %zu of %zu rows differ from the system's Xen headers\n", bad, nx);
        return 1;
    }
    printf("abi-check: %zu rows checked against the system's Xen headers: all equal\n", nx);
    return 0;
}
