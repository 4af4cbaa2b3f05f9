// A Smile-side JMS sender, as Smile itself is: sends one file's text (read as UTF-8) as a
// TextMessage over OpenWire, with properties given as name=value (a String) or
// name:long=value (a Long, as Smile documents sid and provisionRequestId to be integers).
//   java -cp <activemq jars>:. JmsSend tcp://127.0.0.1:61616 QUEUE FILE [name[:long]=value ...]
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import javax.jms.*;
import org.apache.activemq.ActiveMQConnectionFactory;

public class JmsSend {
    public static void main(String[] args) throws Exception {
        Connection connection = new ActiveMQConnectionFactory(args[0]).createConnection();
        connection.start();
        try {
            Session session = connection.createSession(false, Session.AUTO_ACKNOWLEDGE);
            MessageProducer producer = session.createProducer(session.createQueue(args[1]));
            String text = new String(Files.readAllBytes(Paths.get(args[2])), StandardCharsets.UTF_8);
            TextMessage message = session.createTextMessage(text);
            for (int i = 3; i < args.length; i++) {
                String[] pair = args[i].split("=", 2);
                if (pair[0].endsWith(":long")) {
                    message.setLongProperty(pair[0].substring(0, pair[0].length() - 5),
                                            Long.parseLong(pair[1]));
                } else {
                    message.setStringProperty(pair[0], pair[1]);
                }
            }
            producer.send(message);
        } finally {
            connection.close();
        }
    }
}
