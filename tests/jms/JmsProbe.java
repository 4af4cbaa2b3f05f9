// A Smile-side JMS listener, as Smile's own consumers are: receives from a queue over OpenWire
// and prints, per message, its JMS class, each property's Java type and its JMSCorrelationID,
// as one JSON line.
//   java -cp <activemq jars>:. JmsProbe tcp://127.0.0.1:61616 QUEUE COUNT TIMEOUT_MS
import java.util.Enumeration;
import javax.jms.*;
import org.apache.activemq.ActiveMQConnectionFactory;

public class JmsProbe {
    static String q(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') b.append('\\').append(c);
            // beyond ASCII too: the output is then the same whatever the locale's encoding
            else if (c < 0x20 || c > 0x7e) b.append(String.format("\\u%04x", (int) c));
            else b.append(c);
        }
        return b.append('"').toString();
    }

    public static void main(String[] args) throws Exception {
        ConnectionFactory factory = new ActiveMQConnectionFactory(args[0]);
        Connection connection = factory.createConnection();
        connection.start();
        try {
            Session session = connection.createSession(false, Session.AUTO_ACKNOWLEDGE);
            MessageConsumer consumer = session.createConsumer(session.createQueue(args[1]));
            int count = Integer.parseInt(args[2]);
            long timeout = Long.parseLong(args[3]);
            for (int i = 0; i < count; i++) {
                Message m = consumer.receive(timeout);
                if (m == null) break;
                StringBuilder line = new StringBuilder("{\"class\":");
                line.append(q(m instanceof TextMessage ? "TextMessage"
                        : m instanceof BytesMessage ? "BytesMessage" : m.getClass().getName()));
                line.append(",\"properties\":{");
                Enumeration<?> names = m.getPropertyNames();
                boolean first = true;
                while (names.hasMoreElements()) {
                    String name = (String) names.nextElement();
                    Object value = m.getObjectProperty(name);
                    if (!first) line.append(',');
                    first = false;
                    line.append(q(name)).append(":[").append(q(value.getClass().getSimpleName()))
                        .append(',').append(q(String.valueOf(value))).append(']');
                }
                line.append('}');
                String correlation = m.getJMSCorrelationID();
                if (correlation != null) {
                    line.append(",\"correlationId\":").append(q(correlation));
                }
                if (m instanceof TextMessage) {
                    line.append(",\"text\":").append(q(((TextMessage) m).getText()));
                }
                System.out.println(line.append('}'));
            }
        } finally {
            connection.close();
        }
    }
}
