#include "controller/store/sqlite.h"

#include <sqlite3.h>

#include <string>

namespace spark::store::internal {
namespace {

// First line of a statement, shortened, for error messages.
std::string ShortSql(std::string_view sql) {
  size_t start = sql.find_first_not_of(" \n\t");
  if (start == std::string_view::npos) return "";
  sql.remove_prefix(start);
  size_t end = sql.find('\n');
  std::string line(sql.substr(0, end));
  if (line.size() > 80) line = line.substr(0, 77) + "...";
  return line;
}

Status StatusFor(int rc, const std::string& path, std::string_view what, std::string_view detail) {
  std::string message = "database " + path + ": " + std::string(what) + ": " + std::string(detail) +
                        " (" + sqlite3_errstr(rc) + ")";
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return Unavailable(message +
                         "; another process holds a lock on the database: stop it or point the "
                         "controller at another file");
    case SQLITE_FULL:
      return ResourceExhausted(message + "; the disk is full: free space on its filesystem");
    case SQLITE_NOTADB:
      return DataLoss(message +
                      "; the file is not an SQLite database: move it aside or point the "
                      "controller at another file");
    case SQLITE_CORRUPT:
      return DataLoss(message +
                      "; the database is corrupt: restore it from a backup or move it aside to "
                      "start empty");
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH:
      return PermissionDenied(message +
                              "; the file or its directory is not writable by this user: fix "
                              "the permissions");
    case SQLITE_CANTOPEN:
      return FailedPrecondition(message +
                                "; the file cannot be opened: check that its directory exists "
                                "and is writable");
    case SQLITE_IOERR:
      return Unavailable(message + "; I/O error: check the disk and the filesystem");
    case SQLITE_NOMEM:
      return ResourceExhausted(message + "; out of memory");
    case SQLITE_CONSTRAINT:
      if (rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY) {
        return AlreadyExists(message);
      }
      if (rc == SQLITE_CONSTRAINT_FOREIGNKEY) return FailedPrecondition(message);
      return InvalidArgument(message);
    case SQLITE_INTERRUPT:
      return Cancelled(message);
    default:
      return Internal(message);
  }
}

}  // namespace

// --- Statement ---

Statement::Statement(Statement&& other) noexcept
    : connection_(other.connection_),
      stmt_(std::exchange(other.stmt_, nullptr)),
      bind_error_(other.bind_error_) {}

Statement::~Statement() { sqlite3_finalize(stmt_); }

Statement& Statement::Bind(int index, int64_t value) {
  int rc = sqlite3_bind_int64(stmt_, index, value);
  if (rc != SQLITE_OK && bind_error_ == 0) bind_error_ = rc;
  return *this;
}

Statement& Statement::Bind(int index, double value) {
  int rc = sqlite3_bind_double(stmt_, index, value);
  if (rc != SQLITE_OK && bind_error_ == 0) bind_error_ = rc;
  return *this;
}

Statement& Statement::Bind(int index, std::string_view value) {
  int rc =
      sqlite3_bind_text64(stmt_, index, value.data(), value.size(), SQLITE_TRANSIENT, SQLITE_UTF8);
  if (rc != SQLITE_OK && bind_error_ == 0) bind_error_ = rc;
  return *this;
}

Statement& Statement::BindNull(int index) {
  int rc = sqlite3_bind_null(stmt_, index);
  if (rc != SQLITE_OK && bind_error_ == 0) bind_error_ = rc;
  return *this;
}

Statement& Statement::Bind(int index, std::optional<int64_t> value) {
  return value.has_value() ? Bind(index, *value) : BindNull(index);
}

Result<bool> Statement::Step() {
  if (bind_error_ != 0) {
    return connection_->Error(bind_error_, "binding parameters of " + ShortSql(sqlite3_sql(stmt_)));
  }
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return connection_->Error(rc, ShortSql(sqlite3_sql(stmt_)));
}

Status Statement::Run() {
  while (true) {
    SPARK_ASSIGN_OR_RETURN(bool row, Step());
    if (!row) return Status();
  }
}

int64_t Statement::ColumnInt(int column) const { return sqlite3_column_int64(stmt_, column); }

double Statement::ColumnDouble(int column) const { return sqlite3_column_double(stmt_, column); }

std::string Statement::ColumnText(int column) const {
  const unsigned char* text = sqlite3_column_text(stmt_, column);
  if (text == nullptr) return "";
  return std::string(reinterpret_cast<const char*>(text),
                     static_cast<size_t>(sqlite3_column_bytes(stmt_, column)));
}

bool Statement::ColumnIsNull(int column) const {
  return sqlite3_column_type(stmt_, column) == SQLITE_NULL;
}

std::optional<int64_t> Statement::ColumnOptionalInt(int column) const {
  if (ColumnIsNull(column)) return std::nullopt;
  return ColumnInt(column);
}

// --- Connection ---

Result<std::unique_ptr<Connection>> Connection::Open(const std::string& path, bool read_only,
                                                     int busy_timeout_ms) {
  if (path.empty()) {
    return InvalidArgument("database path is empty; give the controller a file with --db PATH");
  }
  int flags = SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE;
  flags |= read_only ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db, flags, nullptr);
  if (rc != SQLITE_OK) {
    std::string detail = db != nullptr ? sqlite3_errmsg(db) : "cannot open";
    sqlite3_close_v2(db);
    return StatusFor(rc, path, "opening", detail);
  }
  std::unique_ptr<Connection> connection(new Connection(db, path));
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, busy_timeout_ms);
  // The first statement reads the header: a file that is not a database fails here.
  SPARK_RETURN_IF_ERROR(connection->Exec("PRAGMA foreign_keys=ON"));
  if (!read_only) {
    SPARK_ASSIGN_OR_RETURN(std::string mode, connection->QueryText("PRAGMA journal_mode=WAL"));
    if (mode != "wal") {
      return FailedPrecondition("database " + path +
                                ": cannot switch to WAL journal mode (still '" + mode +
                                "'); put the database on a local filesystem that supports "
                                "shared memory (not NFS)");
    }
    SPARK_RETURN_IF_ERROR(connection->Exec("PRAGMA synchronous=FULL"));
  } else {
    SPARK_ASSIGN_OR_RETURN(std::string mode, connection->QueryText("PRAGMA journal_mode"));
    if (mode != "wal") {
      return FailedPrecondition("database " + path +
                                ": a read-only connection needs WAL journal mode, found '" + mode +
                                "'; open the database read-write first");
    }
  }
  return connection;
}

Connection::~Connection() { sqlite3_close_v2(db_); }

Status Connection::Exec(std::string_view sql) {
  std::string text(sql);
  char* error = nullptr;
  int rc = sqlite3_exec(db_, text.c_str(), nullptr, nullptr, &error);
  if (rc == SQLITE_OK) return Status();
  std::string detail = error != nullptr ? error : sqlite3_errmsg(db_);
  sqlite3_free(error);
  return StatusFor(sqlite3_extended_errcode(db_) != SQLITE_OK ? sqlite3_extended_errcode(db_) : rc,
                   path_, ShortSql(sql), detail);
}

Result<Statement> Connection::Prepare(std::string_view sql) {
  sqlite3_stmt* stmt = nullptr;
  int rc = sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()), 0, &stmt, nullptr);
  if (rc != SQLITE_OK) {
    sqlite3_finalize(stmt);
    return Error(rc, "preparing " + ShortSql(sql));
  }
  return Statement(*this, stmt);
}

Result<std::string> Connection::QueryText(std::string_view sql) {
  SPARK_ASSIGN_OR_RETURN(Statement statement, Prepare(sql));
  SPARK_ASSIGN_OR_RETURN(bool row, statement.Step());
  if (!row) return Internal("database " + path_ + ": " + ShortSql(sql) + " returned no row");
  return statement.ColumnText(0);
}

int64_t Connection::LastInsertRowId() const { return sqlite3_last_insert_rowid(db_); }

int64_t Connection::Changes() const { return sqlite3_changes64(db_); }

bool Connection::autocommit() const { return sqlite3_get_autocommit(db_) != 0; }

Status Connection::Error(int rc, std::string_view what) const {
  return StatusFor(rc, path_, what, sqlite3_errmsg(db_));
}

}  // namespace spark::store::internal
