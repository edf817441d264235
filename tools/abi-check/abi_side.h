/* Expands abi_rows.def into a table; the includer names the table function
 * with ABI_TABLE_FN after including one header set. */
#include "abi_table.h"
#define IS_SIGNED(x) ((__typeof__(x))-1 < 0)
#define TYPE(t) {"sizeof(" #t ")", sizeof(t), NULL}, {"signed(" #t ")", (__typeof__(t))-1 < 0, NULL},
#define STRUCT(s) {"sizeof(struct " #s ")", sizeof(struct s), NULL}, \
                  {"alignof(struct " #s ")", _Alignof(struct s), NULL},
#define FIELD(s, f) {"offsetof(" #s "." #f ")", offsetof(struct s, f), NULL}, \
                    {"sizeof(" #s "." #f ")", sizeof(((struct s *)0)->f), NULL}, \
                    {"signed(" #s "." #f ")", IS_SIGNED(((struct s *)0)->f), NULL},
#define ARRAY(s, f) {"offsetof(" #s "." #f ")", offsetof(struct s, f), NULL}, \
                    {"sizeof(" #s "." #f ")", sizeof(((struct s *)0)->f), NULL}, \
                    {"countof(" #s "." #f ")", sizeof(((struct s *)0)->f) / sizeof(((struct s *)0)->f[0]), NULL},
#define SUB(s, f) {"offsetof(" #s "." #f ")", offsetof(struct s, f), NULL}, \
                  {"sizeof(" #s "." #f ")", sizeof(((struct s *)0)->f), NULL},
#define CONST(c) {#c, (long long)(c), NULL},
#define STR(c) {#c, (long long)sizeof(c), c},

static const struct abi_row abi_rows[] = {
#include "abi_rows.def"
};

const struct abi_row *ABI_TABLE_FN(size_t *n)
{
    *n = sizeof(abi_rows) / sizeof(abi_rows[0]);
    return abi_rows;
}
