// Schema of the controller's database as an ordered list of migrations, and the code that brings
// a database up to date.
//
// Migration N (versions 1, 2, 3, ... without gaps) is applied exactly once, in one BEGIN IMMEDIATE
// transaction together with its row in the schema_version table (version, description,
// applied_at_ms), so a crash leaves the database at version N-1 or N, never in between. A new
// table or column is always a new migration appended at the end; an applied migration is never
// edited.
//
// Thread safety: ApplyMigrations uses the connection it is given; call it before the connection
// is shared (the store runs it at open, on the write connection).
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "common/status.h"
#include "controller/store/sqlite.h"

namespace spark::store {

struct Migration {
  int version;                   // 1, 2, 3, ...
  std::string_view description;  // one line, stored in schema_version
  std::string_view sql;          // statements run inside the migration's transaction
};

// The store's migrations, in version order.
std::span<const Migration> Migrations();
// Version of the last migration in Migrations().
int LatestSchemaVersion();

// Version of the database: the highest version in schema_version, or 0 for an empty database.
// FailedPrecondition when the database holds tables but no schema_version (another program's
// database).
Result<int> ReadSchemaVersion(internal::Connection& connection);

// Applies every migration of `migrations` newer than the database's version, in order, and
// returns the resulting version. FailedPrecondition when the database is newer than the newest
// migration (a downgrade) or `migrations` is not numbered 1..N; a failing migration is rolled
// back, the error names it, and the migrations before it stay applied.
Result<int> ApplyMigrations(internal::Connection& connection, std::span<const Migration> migrations,
                            int64_t now_ms);

}  // namespace spark::store
