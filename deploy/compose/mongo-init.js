// Initiates the replica set rs0 of the three mongo services once, then waits for a primary.
const members = ["mongo-1:27017", "mongo-2:27017", "mongo-3:27017"].map((host, _id) => ({ _id, host }));
try {
  rs.status();
  print("replica set rs0 exists");
} catch (e) {
  if (e.codeName !== "NotYetInitialized") throw e;
  rs.initiate({ _id: "rs0", members });
  print("replica set rs0 initiated");
}
for (let i = 0; i < 120 && !db.hello().isWritablePrimary && !db.hello().primary; i++) sleep(1000);
if (!db.hello().primary) throw new Error("no primary after 120 s");
print(`primary ${db.hello().primary}`);
