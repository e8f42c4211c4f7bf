#include "common/config.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <memory>
#include <set>
#include <sstream>
#include <utility>

// toml++ is built (Debian's shared library) with exceptions, so it throws toml::parse_error; the
// exception is caught in ConfigSchema::Parse and never leaves this file.
#include <toml++/toml.h>

#include "common/check.h"
#include "common/os_error.h"

namespace spark {

namespace {

std::string_view TypeName(ConfigType type) {
  switch (type) {
    case ConfigType::kString:
      return "string";
    case ConfigType::kInt:
      return "integer";
    case ConfigType::kDouble:
      return "number";
    case ConfigType::kBool:
      return "boolean";
    case ConfigType::kStringList:
      return "list of strings";
    case ConfigType::kEnum:
      return "string";
  }
  return "value";
}

std::string Quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned char>(c));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
}

std::string FormatDouble(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

// A TOML float literal: always has a '.', 'e', "inf" or "nan".
std::string TomlDouble(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  std::ostringstream s;
  s.precision(17);
  s << v;
  std::string out = s.str();
  if (out.find_first_of(".e") == std::string::npos) out += ".0";
  return out;
}

// How a value in the file is shown in an error ("got ...").
std::string Describe(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::string:
      return Quote(node.as_string()->get());
    case toml::node_type::integer:
      return std::to_string(node.as_integer()->get());
    case toml::node_type::floating_point:
      return FormatDouble(node.as_floating_point()->get());
    case toml::node_type::boolean:
      return node.as_boolean()->get() ? "true" : "false";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

std::string TomlLiteral(const ConfigValue& value) {
  return std::visit(
      [](const auto& v) -> std::string {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string>) {
          return Quote(v);
        } else if constexpr (std::is_same_v<T, int64_t>) {
          return std::to_string(v);
        } else if constexpr (std::is_same_v<T, double>) {
          return TomlDouble(v);
        } else if constexpr (std::is_same_v<T, bool>) {
          return v ? "true" : "false";
        } else {
          std::string out = "[";
          for (size_t i = 0; i < v.size(); ++i) {
            if (i > 0) out += ", ";
            out += Quote(v[i]);
          }
          return out + "]";
        }
      },
      value);
}

size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

bool IsPrefixTable(std::string_view table, std::string_view key) {
  return key.size() > table.size() && key.substr(0, table.size()) == table &&
         key[table.size()] == '.';
}

struct ParsedValue {
  ConfigType type;
  ConfigValue value;
  int line;
};
using ParsedValues = std::map<std::string, ParsedValue>;

struct Problem {
  int line;  // 0: no line (missing keys)
  int column;
  std::string text;
};

class Validator {
 public:
  explicit Validator(const std::deque<ConfigField>& fields) : fields_(fields) {}

  void Walk(const toml::table& table, const std::string& prefix, ParsedValues& out) {
    for (auto&& [key, node] : table) {
      const std::string path =
          prefix.empty() ? std::string(key.str()) : prefix + "." + std::string(key.str());
      const ConfigField* field = FindField(path);
      if (field != nullptr) {
        seen_.insert(path);
        Check(*field, node, out);
      } else if (node.is_table() && IsDeclaredTable(path)) {
        Walk(*node.as_table(), path, out);
      } else {
        std::string text = "unknown key '" + path + "'";
        const std::string suggestion = Suggest(path);
        if (!suggestion.empty()) text += " (did you mean '" + suggestion + "'?)";
        Report(key.source().begin.line ? static_cast<int>(key.source().begin.line) : Line(node),
               std::move(text));
      }
    }
  }

  void Report(int line, std::string text) { problems_.push_back({line, 0, std::move(text)}); }
  std::vector<Problem>& problems() { return problems_; }
  // Declared keys present in the file, valid or not.
  bool Seen(const std::string& key) const { return seen_.count(key) != 0; }

 private:
  static int Line(const toml::node& node) { return static_cast<int>(node.source().begin.line); }

  const ConfigField* FindField(std::string_view path) const {
    for (const ConfigField& f : fields_) {
      if (f.key() == path) return &f;
    }
    return nullptr;
  }

  bool IsDeclaredTable(std::string_view path) const {
    for (const ConfigField& f : fields_) {
      if (IsPrefixTable(path, f.key())) return true;
    }
    return false;
  }

  // The declared key or table nearest to `path`, if it is close enough to be a typo.
  std::string Suggest(std::string_view path) const {
    std::string best;
    size_t best_distance = std::max<size_t>(1, std::min<size_t>(3, path.size() / 3)) + 1;
    auto consider = [&](std::string_view candidate) {
      const size_t d = EditDistance(path, candidate);
      if (d < best_distance) {
        best_distance = d;
        best = std::string(candidate);
      }
    };
    for (const ConfigField& f : fields_) {
      std::string_view key = f.key();
      consider(key);
      for (size_t dot = key.find('.'); dot != std::string_view::npos;
           dot = key.find('.', dot + 1)) {
        consider(key.substr(0, dot));
      }
    }
    return best;
  }

  void Mismatch(const ConfigField& field, const toml::node& node, std::string_view expected) {
    Report(Line(node), "key '" + field.key() + "' must be " + std::string(expected) + ", got " +
                           Describe(node));
  }

  void Check(const ConfigField& field, const toml::node& node, ParsedValues& out) {
    const int line = Line(node);
    auto store = [&](ConfigValue value) {
      out[field.key()] = ParsedValue{field.type(), std::move(value), line};
    };
    switch (field.type()) {
      case ConfigType::kString:
        if (!node.is_string()) return Mismatch(field, node, "a string");
        return store(std::string(node.as_string()->get()));
      case ConfigType::kEnum: {
        std::string expected = "one of ";
        for (size_t i = 0; i < field.allowed().size(); ++i) {
          if (i > 0) expected += ", ";
          expected += Quote(field.allowed()[i]);
        }
        if (!node.is_string()) return Mismatch(field, node, expected);
        const std::string& value = node.as_string()->get();
        const auto& allowed = field.allowed();
        if (std::find(allowed.begin(), allowed.end(), value) == allowed.end()) {
          return Mismatch(field, node, expected);
        }
        return store(value);
      }
      case ConfigType::kInt: {
        std::string expected = "an integer";
        if (field.int_range()) {
          expected += " between " + std::to_string(field.int_range()->first) + " and " +
                      std::to_string(field.int_range()->second);
        }
        if (!node.is_integer()) return Mismatch(field, node, expected);
        const int64_t v = node.as_integer()->get();
        if (field.int_range() && (v < field.int_range()->first || v > field.int_range()->second)) {
          return Mismatch(field, node, expected);
        }
        return store(v);
      }
      case ConfigType::kDouble: {
        std::string expected = "a number";
        if (field.double_range()) {
          expected += " between " + FormatDouble(field.double_range()->first) + " and " +
                      FormatDouble(field.double_range()->second);
        }
        double v;
        if (node.is_floating_point()) {
          v = node.as_floating_point()->get();
        } else if (node.is_integer()) {
          v = static_cast<double>(node.as_integer()->get());
        } else {
          return Mismatch(field, node, expected);
        }
        if (field.double_range() &&
            !(v >= field.double_range()->first && v <= field.double_range()->second)) {
          return Mismatch(field, node, expected);
        }
        return store(v);
      }
      case ConfigType::kBool:
        if (!node.is_boolean()) return Mismatch(field, node, "true or false");
        return store(node.as_boolean()->get());
      case ConfigType::kStringList: {
        if (!node.is_array()) return Mismatch(field, node, "a list of strings");
        std::vector<std::string> values;
        const toml::array& array = *node.as_array();
        for (size_t i = 0; i < array.size(); ++i) {
          const toml::node& element = array[i];
          if (!element.is_string()) {
            Report(Line(element), "key '" + field.key() + "' must be a list of strings; element " +
                                      std::to_string(i) + " is " + Describe(element));
            return;
          }
          values.push_back(std::string(element.as_string()->get()));
        }
        return store(std::move(values));
      }
    }
  }

  const std::deque<ConfigField>& fields_;
  std::vector<Problem> problems_;
  std::set<std::string> seen_;
};

}  // namespace

ConfigField& ConfigField::Required() {
  SPARK_CHECK(!default_.has_value()) << "config key '" << key_ << "' has a default";
  required_ = true;
  return *this;
}

ConfigField& ConfigField::Default(std::string value) {
  SPARK_CHECK(type_ == ConfigType::kString || type_ == ConfigType::kEnum)
      << "string default for config key '" << key_ << "' of type " << TypeName(type_);
  if (type_ == ConfigType::kEnum) {
    SPARK_CHECK(std::find(allowed_.begin(), allowed_.end(), value) != allowed_.end())
        << "default \"" << value << "\" of config key '" << key_ << "' is not an allowed value";
  }
  SPARK_CHECK(!required_) << "config key '" << key_ << "' is required";
  default_ = std::move(value);
  return *this;
}

ConfigField& ConfigField::Default(int64_t value) {
  SPARK_CHECK(!required_) << "config key '" << key_ << "' is required";
  if (type_ == ConfigType::kDouble) {
    default_ = static_cast<double>(value);
  } else {
    SPARK_CHECK(type_ == ConfigType::kInt)
        << "integer default for config key '" << key_ << "' of type " << TypeName(type_);
    default_ = value;
  }
  return *this;
}

ConfigField& ConfigField::Default(double value) {
  SPARK_CHECK(type_ == ConfigType::kDouble)
      << "number default for config key '" << key_ << "' of type " << TypeName(type_);
  SPARK_CHECK(!required_) << "config key '" << key_ << "' is required";
  default_ = value;
  return *this;
}

ConfigField& ConfigField::Default(bool value) {
  SPARK_CHECK(type_ == ConfigType::kBool)
      << "boolean default for config key '" << key_ << "' of type " << TypeName(type_);
  SPARK_CHECK(!required_) << "config key '" << key_ << "' is required";
  default_ = value;
  return *this;
}

ConfigField& ConfigField::Default(std::vector<std::string> value) {
  SPARK_CHECK(type_ == ConfigType::kStringList)
      << "list default for config key '" << key_ << "' of type " << TypeName(type_);
  SPARK_CHECK(!required_) << "config key '" << key_ << "' is required";
  default_ = std::move(value);
  return *this;
}

ConfigField& ConfigField::Range(int64_t min, int64_t max) {
  SPARK_CHECK(type_ == ConfigType::kInt) << "integer range on config key '" << key_ << "'";
  SPARK_CHECK_LE(min, max);
  int_range_ = {min, max};
  return *this;
}

ConfigField& ConfigField::Range(double min, double max) {
  SPARK_CHECK(type_ == ConfigType::kDouble) << "number range on config key '" << key_ << "'";
  SPARK_CHECK_LE(min, max);
  double_range_ = {min, max};
  return *this;
}

ConfigField& ConfigField::Help(std::string text) {
  help_ = std::move(text);
  return *this;
}

ConfigField& ConfigSchema::Add(std::string key, ConfigType type) {
  SPARK_CHECK(!key.empty() && key.front() != '.' && key.back() != '.' &&
              key.find("..") == std::string::npos)
      << "bad config key '" << key << "'";
  for (const ConfigField& f : fields_) {
    SPARK_CHECK(f.key() != key) << "config key '" << key << "' declared twice";
    SPARK_CHECK(!IsPrefixTable(f.key(), key) && !IsPrefixTable(key, f.key()))
        << "config key '" << key << "' and '" << f.key() << "' cannot both be values";
  }
  return fields_.emplace_back(std::move(key), type);
}

ConfigField& ConfigSchema::String(std::string key) {
  return Add(std::move(key), ConfigType::kString);
}
ConfigField& ConfigSchema::Int(std::string key) { return Add(std::move(key), ConfigType::kInt); }
ConfigField& ConfigSchema::Double(std::string key) {
  return Add(std::move(key), ConfigType::kDouble);
}
ConfigField& ConfigSchema::Bool(std::string key) { return Add(std::move(key), ConfigType::kBool); }
ConfigField& ConfigSchema::StringList(std::string key) {
  return Add(std::move(key), ConfigType::kStringList);
}
ConfigField& ConfigSchema::Enum(std::string key, std::vector<std::string> allowed) {
  SPARK_CHECK(!allowed.empty()) << "enum config key '" << key << "' allows nothing";
  ConfigField& field = Add(std::move(key), ConfigType::kEnum);
  field.allowed_ = std::move(allowed);
  return field;
}

const ConfigField* ConfigSchema::Find(std::string_view key) const {
  for (const ConfigField& f : fields_) {
    if (f.key() == key) return &f;
  }
  return nullptr;
}

Result<Config> ConfigSchema::Parse(std::string_view toml_text, std::string_view source_name) const {
  toml::table table;
  try {
    table = toml::parse(toml_text, source_name);
  } catch (const toml::parse_error& e) {
    const toml::source_region& where = e.source();
    return InvalidArgument(std::string(source_name) + ":" + std::to_string(where.begin.line) + ":" +
                           std::to_string(where.begin.column) +
                           ": TOML syntax error: " + std::string(e.description()));
  } catch (const std::exception& e) {
    return InvalidArgument(std::string(source_name) + ": cannot parse TOML: " + e.what());
  }

  Config config;
  config.source_name_ = std::string(source_name);
  Validator validator(fields_);
  ParsedValues parsed;
  validator.Walk(table, "", parsed);
  for (auto& [key, p] : parsed)
    config.entries_[key] = Config::Entry{p.type, std::move(p.value), p.line};

  for (const ConfigField& f : fields_) {
    if (validator.Seen(f.key())) continue;
    if (f.default_value().has_value()) {
      config.entries_[f.key()] = Config::Entry{f.type(), *f.default_value(), 0};
    } else if (f.required()) {
      std::string text = "missing required key '" + f.key() + "'";
      if (!f.help().empty()) text += " (" + f.help() + ")";
      text += "; add it to the file";
      validator.Report(0, std::move(text));
    }
  }

  std::vector<Problem>& problems = validator.problems();
  if (problems.empty()) return config;
  std::stable_sort(problems.begin(), problems.end(), [](const Problem& a, const Problem& b) {
    // Problems with a line first, in file order; missing keys (line 0) last.
    if ((a.line == 0) != (b.line == 0)) return b.line == 0;
    return a.line < b.line;
  });
  std::string message;
  for (const Problem& p : problems) {
    if (!message.empty()) message += '\n';
    message += std::string(source_name);
    if (p.line > 0) message += ":" + std::to_string(p.line);
    message += ": " + p.text;
  }
  return InvalidArgument(std::move(message));
}

Result<Config> ConfigSchema::LoadFile(const std::filesystem::path& path) const {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (file == nullptr) {
    return OsError(errno, "cannot open config file " + path.string())
        .WithContext("loading configuration");
  }
  std::string text;
  char buf[8192];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), file.get())) > 0) text.append(buf, n);
  if (std::ferror(file.get())) {
    return OsError(errno, "cannot read config file " + path.string());
  }
  return Parse(text, path.string());
}

std::string ConfigSchema::Describe() const {
  std::string out;
  for (const ConfigField& f : fields_) {
    out += "# " + f.key() + " (" + std::string(TypeName(f.type()));
    if (f.type() == ConfigType::kEnum) {
      out += ": ";
      for (size_t i = 0; i < f.allowed().size(); ++i) {
        if (i > 0) out += " | ";
        out += f.allowed()[i];
      }
    }
    if (f.int_range()) {
      out += ", " + std::to_string(f.int_range()->first) + ".." +
             std::to_string(f.int_range()->second);
    }
    if (f.double_range()) {
      out += ", " + FormatDouble(f.double_range()->first) + ".." +
             FormatDouble(f.double_range()->second);
    }
    if (f.required()) out += ", required";
    out += ")";
    if (!f.help().empty()) out += ": " + f.help();
    out += "\n";
    if (f.default_value().has_value()) {
      out += f.key() + " = " + TomlLiteral(*f.default_value()) + "\n";
    } else {
      out += "# " + f.key() + " =\n";
    }
  }
  return out;
}

const Config::Entry& Config::Get(std::string_view key, ConfigType type) const {
  auto it = entries_.find(key);
  SPARK_CHECK(it != entries_.end())
      << "config key '" << key << "' is not declared or has no value; check Has() first";
  const bool compatible = it->second.type == type ||
                          (type == ConfigType::kString && it->second.type == ConfigType::kEnum);
  SPARK_CHECK(compatible) << "config key '" << key << "' has type " << TypeName(it->second.type)
                          << ", not " << TypeName(type);
  return it->second;
}

bool Config::Has(std::string_view key) const { return entries_.find(key) != entries_.end(); }

bool Config::IsSet(std::string_view key) const {
  auto it = entries_.find(key);
  return it != entries_.end() && it->second.line > 0;
}

const std::string& Config::GetString(std::string_view key) const {
  return std::get<std::string>(Get(key, ConfigType::kString).value);
}

int64_t Config::GetInt(std::string_view key) const {
  return std::get<int64_t>(Get(key, ConfigType::kInt).value);
}

double Config::GetDouble(std::string_view key) const {
  return std::get<double>(Get(key, ConfigType::kDouble).value);
}

bool Config::GetBool(std::string_view key) const {
  return std::get<bool>(Get(key, ConfigType::kBool).value);
}

const std::vector<std::string>& Config::GetStringList(std::string_view key) const {
  return std::get<std::vector<std::string>>(Get(key, ConfigType::kStringList).value);
}

std::string Config::Where(std::string_view key) const {
  auto it = entries_.find(key);
  if (it == entries_.end() || it->second.line == 0) return source_name_ + " (default)";
  return source_name_ + ":" + std::to_string(it->second.line);
}

Status Config::Error(std::string_view key, std::string_view problem) const {
  return InvalidArgument(Where(key) + ": key '" + std::string(key) + "' " + std::string(problem));
}

}  // namespace spark
