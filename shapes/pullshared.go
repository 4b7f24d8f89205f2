package shapes

// What a pull of a shared shape sends when memberships change, and why.
// The drivers write it in SQL (their pull.go); this is the argument.
//
// A device's lastPull L says what it holds: exactly the rows its user could
// see as of L, since pulls are complete. So a row must be taken back (a
// tombstone) from a device that may hold it once its user can no longer see
// it, and sent in full to one that may not hold it once its user can. A
// pull decides "may hold" from L alone:
//
//	the device holds row X of scope S when, at L, its user was a member of
//	S and X was in S: the user's membership of S lasted over L (joined <= L
//	< left), and X entered S at or before L (its scoped_at, or a move's
//	from_scoped_at) and had not left by L.
//
// A user's memberships of S are the current one, since they last joined (a
// membership table the backend keeps records no join time, and it counts
// from the start), and the ended ones, which LeftTable records at each
// removal: in the removal's transaction, with its stamp, which is also the
// removed member's cursor (the removal stamps them). So one pull's snapshot
// sees a removal exactly when its cursor covers it. Then, for a pull of
// (L, C]:
//
//   - Move-in: a membership joined in (L, C] brings every row of the scope.
//   - Move-out: a membership that lasted over L and ended in (L, C], of a
//     scope the user is not a member of now, brings the tombstone of every
//     row that has been in the scope since before L.
//   - Moves: a row that left S in (L, C] for a scope the user cannot see
//     now, after being in S since before L, brings its tombstone when the
//     user's membership of S lasted over L. When that membership ended in
//     (L, C], the moves after its end come too, whatever their stamp: what
//     the device learns is the removal, and the row was in S then.
//
// Each comes once: the next pull's L is at or past C, and no ended
// membership lasts over it. A member removed and added again, whose device
// last pulled before the removal, gets the tombstones of the rows that left
// meanwhile (by moves) and, by move-in, the rows still there. One who
// joined after a row left, or whose device never pulled while a member,
// gets nothing of it.
//
// What a tombstone carries: the key fields, the scope and the tombstone
// true, with the updatedAt and author of the last version the user could
// see. For a row that left while they were a member, that is the move's;
// for one they lost with their removal, the version written before the
// removal: the row itself if it was not written since, else the version
// VersionsTable kept when it was written over. A version is kept when it is
// written over after a member was removed from its scope since it was
// written (a push and the stamping triggers know each scope's newest
// removal from LeftTable). So the tombstone is the same however the row is
// edited after the removal, tells nothing written after it, and a device
// holding any version the user saw applies it: last-write-wins makes each
// version's updatedAt above the one before, so the last one they saw is
// the newest a device of theirs can hold. A move-in after the user comes
// back carries the row's current version, at or above it.
