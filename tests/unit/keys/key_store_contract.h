#pragma once

#include <gtest/gtest.h>

#include <string>

#include "keys/keys.h"

namespace staple::keys::testing {

// The message of a failed result, or "ok", for assertion output.
template <typename R>
std::string Describe(const R& result) {
  if (result.ok()) return "ok";
  return std::string(ErrorKindName(result.error().kind)) + ": " + result.error().message;
}

inline KeyRecord NewRecord(const std::string& name) {
  KeyRecord record;
  record.id = GenerateId();
  record.name = name;
  record.secret_hash = HashSecret(GenerateSecret());
  record.created_at = 1700000000;
  return record;
}

// What every KeyStore does: create, list, get, update, revoke, the version, usage. `other` is a
// second store on the same database (as another replica or the command line would open it).
inline void ExpectKeyStoreContract(KeyStore& store, KeyStore& other) {
  auto version0 = store.Version();
  ASSERT_TRUE(version0.ok()) << Describe(version0);

  KeyRecord first = NewRecord("first");
  first.expires_at = 1800000000;
  first.allowed_models = {"gpt-4o-mini", "llama3"};
  first.request_limits = "10 per minute";
  first.token_limits = "1000/hour";
  first.metadata = R"({"team":"billing"})";
  ASSERT_TRUE(store.Create(first).ok());
  KeyRecord second = NewRecord("second");
  second.created_at = first.created_at + 1;
  ASSERT_TRUE(store.Create(second).ok());

  auto version1 = other.Version();
  ASSERT_TRUE(version1.ok()) << Describe(version1);
  EXPECT_NE(*version1, *version0);

  // Read back exactly, from the other connection.
  auto got = other.Get(first.id);
  ASSERT_TRUE(got.ok()) << Describe(got);
  EXPECT_EQ(got->id, first.id);
  EXPECT_EQ(got->name, "first");
  EXPECT_EQ(got->secret_hash, first.secret_hash);
  EXPECT_EQ(got->created_at, first.created_at);
  EXPECT_EQ(got->expires_at, first.expires_at);
  EXPECT_FALSE(got->revoked);
  EXPECT_EQ(got->allowed_models, first.allowed_models);
  EXPECT_EQ(got->request_limits, "10 per minute");
  EXPECT_EQ(got->token_limits, "1000/hour");
  EXPECT_EQ(got->metadata, R"({"team":"billing"})");

  auto listed = store.List();
  ASSERT_TRUE(listed.ok()) << Describe(listed);
  ASSERT_EQ(listed->size(), 2u);
  EXPECT_EQ((*listed)[0].id, first.id);
  EXPECT_EQ((*listed)[1].id, second.id);
  EXPECT_FALSE((*listed)[1].expires_at.has_value());

  // Errors: unknown ids, duplicates, invalid records.
  EXPECT_EQ(store.Get("key_nope").error().kind, ErrorKind::kNotFound);
  EXPECT_EQ(store.Revoke("key_nope").error().kind, ErrorKind::kNotFound);
  KeyRecord unknown = NewRecord("ghost");
  EXPECT_EQ(store.Update(unknown).error().kind, ErrorKind::kNotFound);
  KeyRecord duplicate = NewRecord("dup");
  duplicate.secret_hash = first.secret_hash;
  EXPECT_EQ(store.Create(duplicate).error().kind, ErrorKind::kInvalidArgument);
  KeyRecord invalid = NewRecord("bad");
  invalid.metadata = "[]";
  EXPECT_EQ(store.Create(invalid).error().kind, ErrorKind::kInvalidArgument);
  auto after_errors = store.Version();
  ASSERT_TRUE(after_errors.ok());
  EXPECT_EQ(*after_errors, *version1) << "failed changes must not bump the version";

  // Update replaces every field but id, secret_hash and created_at.
  KeyRecord changed = first;
  changed.name = "renamed";
  changed.expires_at.reset();
  changed.allowed_models.clear();
  changed.request_limits = "";
  changed.metadata = "{}";
  changed.secret_hash = HashSecret("other");
  changed.created_at = 5;
  ASSERT_TRUE(store.Update(changed).ok());
  auto updated = other.Get(first.id);
  ASSERT_TRUE(updated.ok()) << Describe(updated);
  EXPECT_EQ(updated->name, "renamed");
  EXPECT_FALSE(updated->expires_at.has_value());
  EXPECT_TRUE(updated->allowed_models.empty());
  EXPECT_EQ(updated->request_limits, "");
  EXPECT_EQ(updated->token_limits, "1000/hour");
  EXPECT_EQ(updated->secret_hash, first.secret_hash);
  EXPECT_EQ(updated->created_at, first.created_at);
  auto version2 = store.Version();
  ASSERT_TRUE(version2.ok());
  EXPECT_NE(*version2, *version1);

  ASSERT_TRUE(other.Revoke(second.id).ok());
  auto revoked = store.Get(second.id);
  ASSERT_TRUE(revoked.ok());
  EXPECT_TRUE(revoked->revoked);
  auto version3 = store.Version();
  ASSERT_TRUE(version3.ok());
  EXPECT_NE(*version3, *version2);

  // Usage adds up per (key, day), newest day first, at most `days` days.
  ASSERT_TRUE(store.AddUsage(first.id, {"2024-03-01", 1, 10, 20}).ok());
  ASSERT_TRUE(other.AddUsage(first.id, {"2024-03-01", 2, 5, 7}).ok());
  ASSERT_TRUE(store.AddUsage(first.id, {"2024-03-02", 1, 1, 1}).ok());
  ASSERT_TRUE(store.AddUsage(second.id, {"2024-03-02", 9, 9, 9}).ok());
  auto usage = store.Usage(first.id, 30);
  ASSERT_TRUE(usage.ok()) << Describe(usage);
  ASSERT_EQ(usage->size(), 2u);
  EXPECT_EQ((*usage)[0].day, "2024-03-02");
  EXPECT_EQ((*usage)[1].day, "2024-03-01");
  EXPECT_EQ((*usage)[1].requests, 3);
  EXPECT_EQ((*usage)[1].prompt_tokens, 15);
  EXPECT_EQ((*usage)[1].completion_tokens, 27);
  auto newest = store.Usage(first.id, 1);
  ASSERT_TRUE(newest.ok());
  ASSERT_EQ(newest->size(), 1u);
  EXPECT_EQ((*newest)[0].day, "2024-03-02");
  auto none = store.Usage("key_nope", 30);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

}  // namespace staple::keys::testing
